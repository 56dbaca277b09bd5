"""Logging for the API and the workers: one line per event, as text or JSON (LOG_FORMAT=json).

Job events carry `event`, `job_id` and, where known, `batch_id` as fields; no image content, file contents or
API keys are ever logged.
"""

import json
import logging
from typing import Any

JOB_FIELDS = ("event", "job_id", "batch_id", "status", "detail", "delivery", "job_ids")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({field: getattr(record, field) for field in JOB_FIELDS if hasattr(record, field)})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure_logging(*, level: str, json_lines: bool) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_lines else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def job_event(logger: logging.Logger, event: str, job_id: str, **fields: str) -> None:
    """Log one job event as a line a person can read and a machine can filter."""
    described = " ".join(f"{key}={value}" for key, value in fields.items())
    logger.info("job %s %s %s", job_id, event, described, extra={"event": event, "job_id": job_id, **fields})
