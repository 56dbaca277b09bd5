"""The workers' Celery application (`celery -A worker.app worker`), on the settings of the environment."""

from service.queue import make_celery
from service.settings import get_settings

celery_app = make_celery(get_settings())
