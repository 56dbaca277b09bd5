"""The decision-support notice: every answer of the API carries it (api/notice.py), and so does every callback."""

DISCLAIMER = "Decision support for qualified staff; not a diagnosis."
