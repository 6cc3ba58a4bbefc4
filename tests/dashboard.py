"""Signing in to the dashboard over real HTTP, as a browser would: cookies, the XSRF token, forms."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from tests.harness import Parley

PASSWORD = "correct horse battery"


@dataclass
class Operator:
    """One signed-in browser: its own cookie jar."""

    client: httpx.AsyncClient
    id: int

    @property
    def xsrf(self) -> str:
        return self.client.cookies.get("_xsrf") or ""

    async def get(self, path: str, **params: Any) -> httpx.Response:
        return await self.client.get(path, params=params)

    async def api(self, path: str, **params: Any) -> httpx.Response:
        return await self.client.get(f"/dashboard/api/{path}", params=params)

    async def act(self, conversation_id: int, action: str, body: dict[str, Any] | None = None,
                  *, xsrf: bool = True) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if xsrf:
            headers["X-XSRFToken"] = self.xsrf
        return await self.client.post(f"/dashboard/api/conversations/{conversation_id}/{action}",
                                      content=json.dumps(body or {}), headers=headers)

    async def post_json(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return await self.client.post(path, content=json.dumps(body),
                                      headers={"Content-Type": "application/json",
                                               "X-XSRFToken": self.xsrf})


def browser(parley: Parley) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=parley.base_url, timeout=10, follow_redirects=False)


async def login_form(client: httpx.AsyncClient, email: str, password: str,
                     **headers: str) -> httpx.Response:
    await client.get("/dashboard/login")  # sets the XSRF cookie, as the page load does
    return await client.post("/dashboard/login", headers=headers,
                             data={"email": email, "password": password,
                                   "_xsrf": client.cookies.get("_xsrf") or ""})


async def add_operator(parley: Parley, email: str, role: str = "admin", sites: tuple[int, ...] = (),
                       name: str | None = None) -> int:
    operator = await parley.services.accounts.create(email, name or email.split("@")[0].title(),
                                                     role, PASSWORD, sites)
    return operator.id


async def sign_in(parley: Parley, email: str, role: str = "admin",
                  sites: tuple[int, ...] = ()) -> Operator:
    operator_id = await add_operator(parley, email, role, sites)
    client = browser(parley)
    response = await login_form(client, email, PASSWORD)
    assert response.status_code == 302, response.text
    return Operator(client, operator_id)
