"""The page is written in the language the request asks for, before any script runs."""

import json
from html.parser import HTMLParser

import httpx

from api.languages import catalogue


class PageTexts(HTMLParser):
    """What a browser would show of the page before its script runs: the texts of the data-i18n elements, the
    placeholders of data-i18n-placeholder ones, the <html> lang, the <body> data and the embedded catalogue."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.texts: dict[str, str] = {}
        self.placeholders: dict[str, str] = {}
        self.language = ""
        self.body: dict[str, str] = {}
        self.catalogue = ""
        self._open: str | None = None
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "html":
            self.language = attributes["lang"]
        if tag == "body":
            self.body = attributes
        if "data-i18n" in attributes:
            self._open = attributes["data-i18n"]
            self.texts[self._open] = ""
        if "data-i18n-placeholder" in attributes:
            self.placeholders[attributes["data-i18n-placeholder"]] = attributes["placeholder"]
        if attributes.get("id") == "catalogue":
            self._open = "#catalogue"

    def handle_endtag(self, tag: str) -> None:
        self._open = None

    def handle_data(self, data: str) -> None:
        if self._open == "#catalogue":
            self.catalogue += data
        elif self._open:
            self.texts[self._open] += data


async def test_a_spanish_browser_gets_the_page_in_spanish(api: httpx.AsyncClient):
    answer = await api.get("/", headers={"Accept-Language": "es-ES,es;q=0.9,en;q=0.8"})

    assert answer.status_code == 200
    assert answer.headers["Content-Language"] == "es"
    assert "Accept-Language" in answer.headers["Vary"], "a cache must not give one language's page to another"
    page = PageTexts(answer.text)
    spanish = catalogue("es")
    assert page.language == "es"
    assert page.texts["notice.title"] == "Apoyo a la decisión para personal cualificado, no un diagnóstico."
    assert page.texts == {key: spanish[key] for key in page.texts}
    assert len(page.texts) >= 30
    assert page.placeholders == {"confidence.any": "cualquiera"}
    assert json.loads(page.catalogue) == spanish


async def test_an_english_browser_gets_it_in_english_and_lang_wins_over_the_browser(api: httpx.AsyncClient):
    english = await api.get("/", headers={"Accept-Language": "en-GB,en;q=0.9"})
    asked = await api.get("/?lang=en", headers={"Accept-Language": "es"})
    other = await api.get("/", headers={"Accept-Language": "de-DE"})

    for answer in (english, asked, other):
        page = PageTexts(answer.text)
        assert page.language == "en"
        assert page.texts["notice.title"] == "Decision support for qualified staff, not a diagnosis."
        assert json.loads(page.catalogue) == catalogue("en")
    assert PageTexts((await api.get("/?lang=es", headers={"Accept-Language": "en"})).text).language == "es"
    assert english.headers["ETag"] != (await api.get("/", headers={"Accept-Language": "es"})).headers["ETag"]


async def test_the_page_knows_the_models_class_names_in_each_language(api: httpx.AsyncClient):
    page = PageTexts((await api.get("/")).text)

    names = json.loads(page.body["data-display-names"])
    assert names == {"xception-pneumonia": {"es": {"NORMAL": "Normal", "PNEUMONIA": "Neumonía"},
                                            "en": {"NORMAL": "Normal", "PNEUMONIA": "Pneumonia"}}}


async def test_the_catalogues_are_served_from_the_service(api: httpx.AsyncClient):
    for language in ("en", "es"):
        answer = await api.get(f"/static/i18n/{language}.json")
        assert answer.status_code == 200
        assert answer.json() == catalogue(language)
