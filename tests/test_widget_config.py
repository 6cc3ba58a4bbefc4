"""GET /api/v1/chat/config: what the widget shows, for anyone, and nothing more."""

from __future__ import annotations

from tests.harness import Parley

WIDGET_FIELDS = {"title", "greeting", "color", "position", "lang", "upload_max_bytes", "full_page_urls",
                 # whether a person can answer now (tests/test_hours_config.py)
                 "open_now", "operators_online", "next_opening", "available_when", "time_zone",
                 "away_message"}
ALWAYS_OPEN = {"open_now": True, "operators_online": False, "next_opening": None,
               "available_when": "always", "time_zone": "UTC", "away_message": None}


async def test_config_gives_the_site_look_and_words(parley: Parley) -> None:
    site = await parley.services.sites.create("Bakery", settings={
        "title": "Ask the baker", "greeting": "Bonjour !", "color": "#0a7d4f", "position": "left",
        "lang": "fr", "openai_api_key": "sk-secret", "system_prompt": "internal"})
    response = await parley.client.get("/api/v1/chat/config", params={"site_key": site.site_key})
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    assert body["config"] == {"title": "Ask the baker", "greeting": "Bonjour !", "color": "#0a7d4f",
                              "position": "left", "lang": "fr", "upload_max_bytes": 5 * 1024 * 1024,
                              "full_page_urls": False, **ALWAYS_OPEN}
    assert "secret" not in response.text and "internal" not in response.text


async def test_config_replaces_unsafe_values_with_defaults(parley: Parley) -> None:
    # A colour ends up in CSS on customers' pages: anything but a hex colour is dropped.
    site = await parley.services.sites.create("Odd", settings={
        "color": "red;background:url(//evil)", "position": "middle", "title": "", "lang": 7})
    body = (await parley.client.get("/api/v1/chat/config", params={"site_key": site.site_key})).json()
    assert set(body["config"]) == WIDGET_FIELDS
    assert body["config"]["color"] == "#1f6feb"
    assert body["config"]["position"] == "right"
    assert body["config"]["title"] == "Chat with us"
    assert body["config"]["lang"] == "en"


async def test_config_errors_follow_the_contract(parley: Parley) -> None:
    missing = await parley.client.get("/api/v1/chat/config")
    assert (missing.status_code, missing.json()["code"]) == (400, "invalid_request")
    unknown = await parley.client.get("/api/v1/chat/config", params={"site_key": "sk_" + "x" * 30})
    assert (unknown.status_code, unknown.json()["code"]) == (404, "unknown_site")
    assert unknown.json()["success"] is False


async def test_config_respects_allowed_origins_and_answers_cors(parley: Parley) -> None:
    site = await parley.services.sites.create("Locked", origins=["https://shop.example.com"])
    url = "/api/v1/chat/config"
    allowed = await parley.client.get(url, params={"site_key": site.site_key},
                                      headers={"Origin": "https://shop.example.com"})
    assert allowed.status_code == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://shop.example.com"
    refused = await parley.client.get(url, params={"site_key": site.site_key},
                                      headers={"Origin": "https://elsewhere.example"})
    assert (refused.status_code, refused.json()["code"]) == (403, "origin_not_allowed")
    preflight = await parley.client.options(url, headers={"Origin": "https://shop.example.com"})
    assert preflight.status_code == 204
