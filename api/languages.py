"""The languages of the web page: which one a request gets at first paint, and the catalogue of its texts.

The catalogues are static JSON files (api/static/i18n/<language>.json), served with the page for its language
switch; the API's own answers (problem details, notices) stay English.
"""

import json
from functools import cache
from pathlib import Path

LANGUAGES = ("en", "es")
"""The languages the page is written in; each has a catalogue with the same keys."""

DEFAULT_LANGUAGE = "en"
"""The page's language for a browser that accepts none of LANGUAGES."""

CATALOGUE_DIR = Path(__file__).resolve().parent / "static" / "i18n"


def choose_language(accept_language: str | None, requested: str | None = None) -> str:
    """The page's language: `requested` (the `?lang=` parameter) if the page has it, else the one the browser
    prefers by its Accept-Language (q-values weigh, the first listed wins a tie, `es-AR` counts as `es`)."""
    if requested in LANGUAGES:
        return requested
    best, best_weight = DEFAULT_LANGUAGE, 0.0
    for item in (accept_language or "").split(","):
        tag, _, parameters = item.partition(";")
        weight = _weight(parameters)
        primary = tag.strip().lower().split("-")[0]
        if primary in (*LANGUAGES, "*") and weight > best_weight:
            best, best_weight = (DEFAULT_LANGUAGE if primary == "*" else primary), weight
    return best


def _weight(parameters: str) -> float:
    """The q-value of an Accept-Language item (1 without one; 0, never chosen, if it is not a number in 0..1)."""
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            try:
                weight = float(value)
            except ValueError:
                return 0.0
            return weight if 0.0 <= weight <= 1.0 else 0.0
    return 1.0


@cache
def catalogue(language: str) -> dict[str, str]:
    """The texts of the page in `language` (one of LANGUAGES), by key."""
    texts: dict[str, str] = json.loads((CATALOGUE_DIR / f"{language}.json").read_text(encoding="utf-8"))
    return texts
