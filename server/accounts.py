"""Operator accounts: passwords (argon2id), sign-in with limits kept in the store, server-side
sessions, the one-time link that creates the first admin, and two-factor codes.

Everything here is shared by the CLI and the dashboard; nothing is kept in process memory, so
several processes agree on who is signed in and how many attempts an address has left.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from zxcvbn import zxcvbn

from server.errors import Conflict, InvalidRequest, ParleyError, RateLimited
from server.store.base import DuplicateOperator, Store, StoreUnavailable
from server.store.models import Operator, OperatorSession
from server.validation import normalise_email

if TYPE_CHECKING:
    from server.app import Services

log = logging.getLogger(__name__)

ROLES = ("admin", "agent")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
# zxcvbn's estimate, 0-4: 3 is "safely unguessable" (about 10^8 guesses or more). It knows common
# passwords, words, names, dates, keyboard runs and repeats, and the operator's own email and name.
MIN_PASSWORD_SCORE = 3
GUESS_CHECKED_CHARS = 72  # zxcvbn's own limit; a password longer than that is long enough
FAILURE_WINDOW_SECONDS = 15 * 60
MAX_FAILURES_PER_ACCOUNT = 10
MAX_FAILURES_PER_ADDRESS = 50
SETUP_TOKEN_SECONDS = 24 * 3600
TOUCH_EVERY_SECONDS = 60  # how stale a session's last_seen may get before it is written again
RECOVERY_CODES = 8


class SignInRefused(ParleyError):
    status, code = 401, "unauthorized"


def token_hash(token: str) -> str:
    """What the store keeps of a session or setup token: its SHA-256, never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()


def load_cookie_secret(data_dir: Path, configured: str | None) -> str:
    """PARLEY_COOKIE_SECRET, or a secret made on first start and kept in the data directory
    (mode 0600), so every process and every restart signs cookies alike."""
    if configured:
        return configured
    path = data_dir / "cookie_secret"
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_text().strip()
        if len(secret) < 32:
            raise SystemExit(f"{path} is damaged (too short); remove it to make a new one") from None
        return secret
    with os.fdopen(fd, "w") as handle:
        secret = secrets.token_urlsafe(48)
        handle.write(secret + "\n")
    return secret


@dataclass(frozen=True)
class SignedIn:
    operator: Operator
    session: OperatorSession

    @property
    def needs_second_factor(self) -> bool:
        return not self.session.second_factor_done


class AccountService:
    def __init__(self, store: Store, *, idle_timeout: float = 12 * 3600,
                 hasher: PasswordHasher | None = None) -> None:
        self.store = store
        self.idle_timeout = idle_timeout
        # argon2id with the library's current parameters (RFC 9106's low-memory choice).
        self._hasher = hasher or PasswordHasher()
        self._dummy_hash: str | None = None  # made on first need: CLI commands never pay for it

    # -- passwords ----------------------------------------------------------------------------
    @staticmethod
    async def check_password_rules(password: str, about: Iterable[str] = ()) -> None:
        """Long enough and not easy to guess; `about`: the operator's email and name, which a
        password should not be made of."""
        if len(password) < MIN_PASSWORD:
            raise InvalidRequest(f"A password has at least {MIN_PASSWORD} characters.")
        if len(password) > MAX_PASSWORD:
            raise InvalidRequest(f"A password has at most {MAX_PASSWORD} characters.")
        words = [part for text in about for part in (text, *text.replace("@", " ").split()) if part]
        # Up to ~40 ms for a long one: not on the event loop.
        estimate = await asyncio.to_thread(zxcvbn, password[:GUESS_CHECKED_CHARS], user_inputs=words)
        if estimate["score"] < MIN_PASSWORD_SCORE:
            feedback = estimate["feedback"]
            why = " ".join([feedback.get("warning") or "", *feedback.get("suggestions", [])]).strip()
            raise InvalidRequest("This password is too easy to guess. " + (why or "Add another word or two."))

    async def hash_password(self, password: str, about: Iterable[str] = ()) -> str:
        await self.check_password_rules(password, about)
        return await asyncio.to_thread(self._hasher.hash, password)

    async def _verify(self, password_hash: str, password: str) -> bool:
        def verify() -> bool:
            try:
                return self._hasher.verify(password_hash, password)
            except (VerificationError, InvalidHashError):
                return False

        return await asyncio.to_thread(verify)

    # -- accounts -----------------------------------------------------------------------------
    @staticmethod
    def normalise_email(raw: str) -> str:
        try:
            return normalise_email(raw.strip()).lower()
        except InvalidRequest:  # an admin typed it: say what, not which field
            shown = raw.strip()
            shown = shown if len(shown) <= 80 else shown[:80] + "…"
            raise InvalidRequest(f"“{shown}” is not a valid email address.") from None

    def _checked(self, email: str, name: str, role: str) -> tuple[str, str]:
        """The email and name as stored; InvalidRequest naming what is wrong."""
        email = self.normalise_email(email)
        name = name.strip()
        if not name or len(name) > 100:
            raise InvalidRequest("A display name is 1 to 100 characters.")
        if role not in ROLES:
            raise InvalidRequest("The role is 'admin' or 'agent'.")
        return email, name

    async def create(self, email: str, name: str, role: str, password: str,
                     site_ids: Iterable[int] = ()) -> Operator:
        email, name = self._checked(email, name, role)
        return await self._insert(email, name, role, await self.hash_password(password, (email, name)),
                                  site_ids)

    async def _insert(self, email: str, name: str, role: str, password_hash: str,
                      site_ids: Iterable[int]) -> Operator:
        try:
            operator = await self.store.create_operator(email, name, role, password_hash, site_ids)
        except DuplicateOperator:
            raise Conflict(f"An operator with the email {email} already exists.") from None
        log.info("operator %s created (%s)", operator.id, role)
        return operator

    async def get_by_email(self, email: str) -> Operator:
        operator = await self.store.get_operator_by_email(self.normalise_email(email))
        if operator is None:
            raise InvalidRequest(f"No operator has the email {email.strip()[:254]}.")
        return operator

    async def set_password(self, operator: Operator, password: str) -> None:
        password_hash = await self.hash_password(password, (operator.email, operator.name))
        await self.store.update_operator(operator.id, {"password_hash": password_hash})
        ended = await self.store.delete_operator_sessions(operator_id=operator.id)
        log.info("operator %s changed password; %d session(s) ended", operator.id, ended)

    async def set_disabled(self, operator: Operator, disabled: bool) -> None:
        await self.store.update_operator(operator.id, {"disabled": disabled})
        if disabled:
            ended = await self.store.delete_operator_sessions(operator_id=operator.id)
            log.info("operator %s disabled; %d session(s) ended", operator.id, ended)

    async def has_operators(self) -> bool:
        return await self.store.count_operators() > 0

    # -- signing in ---------------------------------------------------------------------------
    async def sign_in(self, email: str, password: str, *, ip: str | None,
                      user_agent: str | None) -> tuple[str, SignedIn]:
        """A new session token for the right email and password; one refusal for any wrong one."""
        now = time.time()
        try:
            email = self.normalise_email(email)
        except InvalidRequest:
            email = email.strip().lower()[:254]
        keys = [f"account:{email}"] + ([f"address:{ip}"] if ip else [])
        since = now - FAILURE_WINDOW_SECONDS
        if (await self.store.count_login_failures(keys[0], since) >= MAX_FAILURES_PER_ACCOUNT
                or (ip and await self.store.count_login_failures(keys[1], since)
                    >= MAX_FAILURES_PER_ADDRESS)):
            log.warning("sign-in refused: too many failures (account or address)")
            raise RateLimited("Too many failed sign-ins. Try again in 15 minutes.",
                              retry_after=FAILURE_WINDOW_SECONDS)
        operator = await self.store.get_operator_by_email(email) if email else None
        if self._dummy_hash is None:
            self._dummy_hash = await asyncio.to_thread(self._hasher.hash, secrets.token_urlsafe(16))
        # Verify against a dummy hash when there is no such operator: the same time either way.
        valid = await self._verify(operator.password_hash if operator else self._dummy_hash, password)
        if operator is None or operator.disabled or not valid:
            await self.store.record_login_failure(keys, now)
            log.info("sign-in failed from %s", ip)
            raise SignInRefused("Wrong email or password.")
        await self.store.clear_login_failures(keys[0])
        token = secrets.token_urlsafe(32)
        session = OperatorSession(token_hash=token_hash(token), operator_id=operator.id,
                                  created_at=now, last_seen=now, ip=ip,
                                  user_agent=(user_agent or "")[:300] or None,
                                  second_factor_done=operator.totp_secret is None)
        await self.store.create_operator_session(session)
        log.info("operator %s signed in", operator.id)
        return token, SignedIn(operator, session)

    async def session(self, token: str | None, *, touch: bool = True) -> SignedIn | None:
        """Who holds this session token, if it is still good (not idle too long, not disabled).
        `touch`: this is the operator's own request, so the session is not idle (a check made on
        their behalf, such as the live feed's, is not)."""
        if not token:
            return None
        hashed = token_hash(token)
        session = await self.store.get_operator_session(hashed)
        if session is None:
            return None
        now = time.time()
        if now - session.last_seen > self.idle_timeout:
            await self.store.delete_operator_sessions(token_hash=hashed)
            return None
        operator = await self.store.get_operator(session.operator_id)
        if operator is None or operator.disabled:
            return None
        if touch and now - session.last_seen > TOUCH_EVERY_SECONDS:
            await self.store.touch_operator_session(hashed, now)
        return SignedIn(operator, session)

    async def still_signed_in(self, token: str, operator: Operator) -> bool:
        """Whether the session still holds, with the rights `operator` had: signed out, disabled,
        password changed, role or sites changed all say no (an open live feed then ends)."""
        signed_in = await self.session(token, touch=False)
        if signed_in is None or signed_in.needs_second_factor:
            return False
        now = signed_in.operator
        return (now.id, now.role, now.site_ids) == (operator.id, operator.role, operator.site_ids)

    async def mark_present(self, token: str) -> None:
        """A dashboard tab of this session is open: its operator counts as online (opening hours)."""
        await self.store.mark_operator_present(token_hash(token), time.time())

    async def stay_present(self, token: str, every: float) -> None:
        """Say the tab is open every `every` seconds until cancelled (when the live feed ends)."""
        while True:
            try:
                await self.mark_present(token)
            except StoreUnavailable:
                log.warning("could not record an operator's presence; trying again in %.0f s", every)
            await asyncio.sleep(every)

    async def forget_stale(self, now: float | None = None) -> None:
        """Housekeeping: sessions idle past the timeout, failures older than their window."""
        now = time.time() if now is None else now
        await self.store.delete_operator_sessions(idle_before=now - self.idle_timeout)
        await self.store.prune_login_failures(now - FAILURE_WINDOW_SECONDS)

    async def sign_out(self, token: str) -> None:
        await self.store.delete_operator_sessions(token_hash=token_hash(token))

    # -- two-factor codes (TOTP) --------------------------------------------------------------
    @staticmethod
    def new_totp_secret() -> str:
        return pyotp.random_base32()

    @staticmethod
    def totp_uri(operator: Operator, secret: str) -> str:
        return pyotp.TOTP(secret).provisioning_uri(name=operator.email, issuer_name="Parley")

    async def enable_totp(self, operator: Operator, secret: str, code: str) -> list[str]:
        """Turn two-factor on once the operator proves their app has the secret; returns the
        one-time recovery codes (shown once, kept only as hashes)."""
        if not pyotp.TOTP(secret).verify(code.strip(), valid_window=1):
            raise InvalidRequest("That code is not right; check the time on your phone and try again.")
        codes = [secrets.token_hex(5) for _ in range(RECOVERY_CODES)]
        hashes = await asyncio.gather(*(asyncio.to_thread(self._hasher.hash, c) for c in codes))
        await self.store.update_operator(operator.id, {"totp_secret": secret,
                                                       "recovery_codes": list(hashes)})
        return codes

    async def disable_totp(self, operator: Operator) -> None:
        await self.store.update_operator(operator.id, {"totp_secret": None, "recovery_codes": []})

    async def complete_second_factor(self, token: str, signed_in: SignedIn, code: str,
                                     ip: str | None) -> bool:
        operator = signed_in.operator
        key = f"totp:{operator.id}"
        now = time.time()
        if await self.store.count_login_failures(key, now - FAILURE_WINDOW_SECONDS) >= MAX_FAILURES_PER_ACCOUNT:
            raise RateLimited("Too many wrong codes. Try again in 15 minutes.",
                              retry_after=FAILURE_WINDOW_SECONDS)
        code = code.strip().replace(" ", "")
        ok = bool(operator.totp_secret) and pyotp.TOTP(operator.totp_secret or "").verify(code, valid_window=1)
        if not ok:
            for index, hashed in enumerate(operator.recovery_codes):
                if await self._verify(hashed, code):
                    remaining = [h for i, h in enumerate(operator.recovery_codes) if i != index]
                    await self.store.update_operator(operator.id, {"recovery_codes": remaining})
                    log.info("operator %s used a recovery code (%d left)", operator.id, len(remaining))
                    ok = True
                    break
        if not ok:
            await self.store.record_login_failure([key] + ([f"address:{ip}"] if ip else []), now)
            return False
        await self.store.clear_login_failures(key)
        await self.store.touch_operator_session(token_hash(token), now, second_factor_done=True)
        return True

    # -- the first admin ----------------------------------------------------------------------
    async def setup_token(self) -> str | None:
        """With no operator yet, a fresh single-use token for /dashboard/setup; else None."""
        if await self.has_operators():
            return None
        token = secrets.token_urlsafe(24)
        await self.store.add_setup_token(token_hash(token), time.time() + SETUP_TOKEN_SECONDS)
        return token

    async def setup_token_valid(self, token: str) -> bool:
        if not token or await self.has_operators():
            return False
        return await self.store.use_setup_token(token_hash(token), time.time(), consume=False)

    async def create_first_admin(self, token: str, email: str, name: str, password: str) -> Operator:
        # Every field is checked before the one-time link is used up: a mistake in the form must
        # leave the link working.
        email, name = self._checked(email, name, "admin")
        password_hash = await self.hash_password(password, (email, name))
        if await self.has_operators() or not await self.store.use_setup_token(token_hash(token), time.time()):
            raise InvalidRequest("This setup link was used already or has expired. "
                                 "Restart the server for a new one, or use 'operator add'.")
        return await self._insert(email, name, "admin", password_hash, ())

    async def check_password(self, operator: Operator, password: str) -> bool:
        current = await self.store.get_operator(operator.id)
        return current is not None and await self._verify(current.password_hash, password)


async def dashboard_lines(services: Services, base: str) -> list[str]:
    """What `serve` prints about the dashboard: where it is and how to get in."""
    token = await services.accounts.setup_token()
    if token is None:
        return [f"  Dashboard:     {base}/dashboard/  (sign in at {base}/dashboard/login)"]
    return [f"  Dashboard:     {base}/dashboard/",
            "  No operator yet. Create the first admin (link works once, for 24 h):",
            f"                 {base}/dashboard/setup?token={token}"]
