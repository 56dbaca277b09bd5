# The live-service fixtures (real Redis, worker and API processes) are shared by every test folder.
pytest_plugins = ["tests.live_service"]
