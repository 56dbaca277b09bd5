"""The page's languages: the choice from Accept-Language and ?lang=, and catalogues that cover every text."""

import ast
import re
from pathlib import Path

import pytest

from api.languages import DEFAULT_LANGUAGE, LANGUAGES, catalogue, choose_language
from service.notice import DISCLAIMER
from tests.processes import ROOT

PROBLEM_MAKERS = {"ProblemError": 1, "problem_response": 1, "problem": 0}
"""The calls that name a problem type, and the place of the type among their arguments."""

PROBLEM_TYPE = r"[a-z]+(?:-[a-z]+)+"
"""What a problem type of the service looks like (`invalid-image`). Types the framework makes of an HTTP status
(`not-found` for an unknown route, `method-not-allowed`) are not in the scan: the page says "refused (HTTP 404)"."""


@pytest.mark.parametrize(("accept_language", "chosen"), [
    ("es-ES,es;q=0.9,en;q=0.8", "es"),
    ("es-AR", "es"),
    ("en-US,en;q=0.9,es;q=0.8", "en"),
    ("fr-FR,fr;q=0.9,es;q=0.7,en;q=0.5", "es"),  # French is not offered: the best of the others
    ("en;q=0.4, es;q=0.6", "es"),  # the weights decide, not the order
    ("es;q=0.5, en;q=0.5", "es"),  # a tie: the first listed
    ("ES", "es"),
    ("es;q=0, en;q=0.1", "en"),  # q=0: not acceptable at all
    ("es;q=nonsense, en;q=0.2", "en"),
    ("es;q=2, en;q=0.2", "en"),  # out of range: ignored
    ("fr, de", DEFAULT_LANGUAGE),
    ("*", DEFAULT_LANGUAGE),
    ("*;q=0.9, es;q=0.5", DEFAULT_LANGUAGE),
    ("", DEFAULT_LANGUAGE),
    (None, DEFAULT_LANGUAGE),
])
def test_the_browsers_preferred_language_is_chosen(accept_language: str | None, chosen: str):
    assert choose_language(accept_language) == chosen


def test_lang_in_the_address_wins_over_the_browser():
    assert choose_language("es-ES,es;q=0.9", "en") == "en"
    assert choose_language("en-US", "es") == "es"
    assert choose_language("es-ES", "fr") == "es", "a language the page lacks is ignored"
    assert choose_language("es-ES", "") == "es"


def test_both_catalogues_have_exactly_the_same_keys_and_no_empty_text():
    english, spanish = catalogue("en"), catalogue("es")

    assert set(english) == set(spanish), set(english) ^ set(spanish)
    for language in LANGUAGES:
        assert all(text.strip() for text in catalogue(language).values()), f"an empty text in {language}"


def test_both_catalogues_fill_in_the_same_values():
    def values_by_text(language: str) -> dict[str, set[str]]:
        # The forms of a plural (`x.one`, `x.other`) are one text: a form may leave out the number ("This file").
        texts: dict[str, set[str]] = {}
        for key, text in catalogue(language).items():
            base = re.sub(r"\.(zero|one|two|few|many|other)$", "", key)
            texts.setdefault(base, set()).update(re.findall(r"\{(\w+)\}", text))
        return texts

    assert values_by_text("en") == values_by_text("es")


def test_every_text_the_page_names_is_in_the_catalogues():
    page = (ROOT / "api/static/index.html").read_text()
    script = (ROOT / "api/static/app.js").read_text()
    named = set(re.findall(r'data-i18n(?:-placeholder)?="([\w.-]+)"', page))
    named |= set(re.findall(r'\bt\("([\w.-]+)"', script))
    named |= {f"{key}.other" for key in re.findall(r'\btPlural\("([\w.-]+)"', script)}
    named |= {f"status.{status}" for status in ("uploading", "queued", "running", "succeeded", "failed",
                                                "canceled", "expired")}

    assert named - set(catalogue("en")) == set()


def problem_types_answered() -> set[str]:
    """Every problem type the service names: in a call that makes a problem (api/, service/, worker/), and in the
    README's table of problems."""
    types: set[str] = set()
    for path in (path for folder in ("api", "service", "worker") for path in (ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", None))
                place = PROBLEM_MAKERS.get(name or "")
                if place is not None and len(node.args) > place and isinstance(node.args[place], ast.Constant):
                    types.add(node.args[place].value)
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "kind":
                types |= {leaf.value for leaf in ast.walk(node.value) if isinstance(leaf, ast.Constant)
                          and re.fullmatch(PROBLEM_TYPE, str(leaf.value))}
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| type | status | when |"):]
    for row in table.splitlines()[2:]:
        if not row.startswith("|"):
            break
        types |= set(re.findall(f"`({PROBLEM_TYPE})`", row.split("|")[1]))
    return types


def test_every_problem_type_the_api_answers_has_a_reason_in_each_language():
    types = problem_types_answered()
    assert {"invalid-image", "too-many-files", "zip-bomb", "callbacks-disabled", "worker-lost"} <= types
    assert len(types) >= 36, "the scan of the service's problems found too few"

    for language in LANGUAGES:
        missing = {kind for kind in types if f"problem.{kind}" not in catalogue(language)}
        assert missing == set(), f"problem types without a reason in {language}"


def test_the_spanish_catalogue_is_spanish():
    spanish = catalogue("es")

    assert spanish["notice.title"] == "Apoyo a la decisión para personal cualificado, no un diagnóstico."
    assert spanish["problem.invalid-image"] == "No es una imagen que el modelo pueda leer."
    same = {key for key, text in catalogue("en").items() if spanish[key] == text}
    assert same <= {"result.zip"}, f"texts left in English: {sorted(same)}"


def test_the_pages_notice_in_english_says_what_the_api_says():
    def words(text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())

    assert words(catalogue("en")["notice.title"]) == words(DISCLAIMER)


def test_the_catalogues_are_served_with_the_page():
    assert {path.name for path in Path(ROOT / "api/static/i18n").glob("*.json")} == {
        f"{language}.json" for language in LANGUAGES}
