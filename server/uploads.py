"""Image uploads that cannot exhaust memory or starve other visitors.

An upload's body is parsed as it arrives (python-multipart) and its image goes straight to a
temporary file, never more than the site's limit; only a few uploads run at once per address and
in all; and the expensive part, decoding, is shared out in turns between addresses, so one address
sending thirty large images does not make everyone else wait behind them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import IO, AsyncIterator, Callable

from python_multipart.multipart import MultipartParser, parse_options_header

from server.errors import InvalidRequest, RateLimited, TooLarge, Unavailable

log = logging.getLogger(__name__)

UPLOADS_AT_ONCE = 32
UPLOADS_AT_ONCE_PER_ADDRESS = 4
DECODES_AT_ONCE = 2
DECODES_PER_ADDRESS = 1
DECODE_QUEUE_SECONDS = 20.0
# Room for the form's framing and text fields around the image.
FORM_OVERHEAD = 64 * 1024
TEXT_FIELDS = ("site_key", "session_id")
MAX_TEXT_FIELD = 256
MAX_PARTS = 8
# A spool file untouched this long was left by a process that died mid-upload.
LEFTOVER_SECONDS = 3600.0

OpenFile = Callable[[Path], IO[bytes]]


def readable_size(size: int) -> str:
    return f"{size / 1048576:.3g} MB" if size >= 1048576 else f"{max(1, size // 1024)} KB"


def open_spool_file(directory: Path) -> IO[bytes]:
    """A new temporary file under `directory` (the data directory's disk, not a RAM-backed /tmp)."""
    directory.mkdir(parents=True, exist_ok=True)
    return tempfile.NamedTemporaryFile(dir=directory, prefix="upload-", suffix=".part", delete=False)


def out_of_room(exc: OSError) -> Unavailable:
    log.error("cannot store an upload: %s", exc)
    return Unavailable("The server cannot store images right now; please try again later.",
                       retry_after=60)


class UploadSlots:
    """How many uploads are being received and processed at once, per address and in all."""

    def __init__(self, total: int = UPLOADS_AT_ONCE,
                 per_address: int = UPLOADS_AT_ONCE_PER_ADDRESS) -> None:
        self.total = total
        self.per_address = per_address
        self._by_address: collections.Counter[str] = collections.Counter()

    @property
    def in_use(self) -> int:
        return sum(self._by_address.values())

    def take(self, address: str | None) -> None:
        key = address or ""
        if self._by_address[key] >= self.per_address:
            raise RateLimited("Wait for your other images to finish uploading.", retry_after=5)
        if self.in_use >= self.total:
            raise Unavailable("Too many images are being uploaded; please try again.", retry_after=5)
        self._by_address[key] += 1

    def give_back(self, address: str | None) -> None:
        key = address or ""
        self._by_address[key] -= 1
        if self._by_address[key] <= 0:
            del self._by_address[key]


class FairTurns:
    """At most `slots` holders at once and `per_address` of them from one address; waiting
    addresses take turns, one each in rotation. One address sending thirty images then has one
    decoding at a time, and everyone else finds the other slots free or is next in line."""

    def __init__(self, slots: int = DECODES_AT_ONCE, per_address: int = DECODES_PER_ADDRESS) -> None:
        self._free = slots
        self.per_address = per_address
        self._holding: collections.Counter[str] = collections.Counter()
        self._waiting: collections.OrderedDict[str, collections.deque[asyncio.Future[None]]] = (
            collections.OrderedDict())

    @contextlib.asynccontextmanager
    async def turn(self, address: str | None, *, timeout: float) -> AsyncIterator[None]:
        key = address or ""
        if self._free > 0 and self._holding[key] < self.per_address and key not in self._waiting:
            self._take(key)
        else:
            await self._wait(key, timeout)
        try:
            yield
        finally:
            self._holding[key] -= 1
            if self._holding[key] <= 0:
                del self._holding[key]
            self._free += 1
            self._hand_on()

    def _take(self, key: str) -> None:
        self._free -= 1
        self._holding[key] += 1

    async def _wait(self, key: str, timeout: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, collections.deque()).append(future)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(future)
        except BaseException as exc:
            if future.done():  # the turn came just as we gave up: pass it on
                self._holding[key] -= 1
                if self._holding[key] <= 0:
                    del self._holding[key]
                self._free += 1
                self._hand_on()
            else:
                future.cancel()
                self._forget(key, future)
            if isinstance(exc, TimeoutError):
                raise Unavailable("Too many images are being processed; please try again.",
                                  retry_after=10) from None
            raise

    def _forget(self, key: str, future: asyncio.Future[None]) -> None:
        queue = self._waiting.get(key)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(future)
            if not queue:
                del self._waiting[key]

    def _hand_on(self) -> None:
        """Give free slots to the first waiter of each address in the rotation that may have one."""
        for key in list(self._waiting):
            if self._free <= 0:
                return
            if self._holding[key] >= self.per_address:
                continue
            queue = self._waiting[key]
            future = queue.popleft()
            if queue:
                self._waiting.move_to_end(key)  # its next waiter goes after the other addresses
            else:
                del self._waiting[key]
            if not future.done():
                self._take(key)
                future.set_result(None)


class FormSpool:
    """A multipart/form-data body parsed as it arrives: the part `image` is written to a temporary
    file (at most `limit` bytes, else TooLarge), the text fields site_key and session_id are kept,
    anything else is skipped."""

    def __init__(self, content_type: str, directory: Path, limit: int, *,
                 open_file: OpenFile = open_spool_file) -> None:
        kind, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise InvalidRequest("Send the image as multipart/form-data with the field 'image'.")
        self.directory = directory
        self.limit = limit
        self.open_file = open_file
        self.fields: dict[str, str] = {}
        self.image_path: Path | None = None
        self.image_size = 0
        self.complete = False
        self._file: IO[bytes] | None = None
        self._parts = 0
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._part_name: str | None = None
        self._text = bytearray()
        self._sink: Callable[[bytes], None] | None = None
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._header_field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": lambda data, start, end: self._sink and self._sink(data[start:end]),
            "on_part_end": self._part_end,
            "on_end": self._end,
        })

    # -- feeding ------------------------------------------------------------------------------
    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except (TooLarge, Unavailable, InvalidRequest):
            self.discard()
            raise
        except ValueError:  # python-multipart's parse errors are ValueErrors
            self.discard()
            raise InvalidRequest("The multipart form data is malformed.") from None

    def finish(self) -> None:
        """The body is complete: the image must be there, whole."""
        if not self.complete:
            self.discard()
            raise InvalidRequest("The multipart form data is incomplete.")
        if self.image_path is None:
            raise InvalidRequest("The multipart field 'image' is missing.")

    def discard(self) -> None:
        """Close and delete the temporary file (idempotent)."""
        with contextlib.suppress(Unavailable):
            self._close_file()
        if self.image_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.image_path)
            self.image_path = None

    # -- parser callbacks ---------------------------------------------------------------------
    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise InvalidRequest("The form has too many parts.")
        self._part_name = None
        self._sink = None

    def _header_end(self) -> None:
        if bytes(self._header_field).lower() == b"content-disposition":
            _, options = parse_options_header(bytes(self._header_value))
            name = options.get(b"name")
            self._part_name = name.decode("utf-8", "replace") if name is not None else None
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        if self._part_name == "image" and self.image_path is None:
            try:
                self._file = self.open_file(self.directory)
            except OSError as exc:
                raise out_of_room(exc) from None
            self.image_path = Path(self._file.name)
            self._sink = self._write_image
        elif self._part_name in TEXT_FIELDS:
            self._text.clear()
            self._sink = self._keep_text

    def _write_image(self, data: bytes) -> None:
        self.image_size += len(data)
        if self.image_size > self.limit:
            raise TooLarge(f"Images can be at most {readable_size(self.limit)}.")
        assert self._file is not None
        try:
            self._file.write(data)
        except OSError as exc:
            raise out_of_room(exc) from None

    def _keep_text(self, data: bytes) -> None:
        if len(self._text) + len(data) > MAX_TEXT_FIELD:
            raise InvalidRequest(f"The field '{self._part_name}' is too long.")
        self._text.extend(data)

    def _part_end(self) -> None:
        if self._sink == self._keep_text and self._part_name:
            self.fields[self._part_name] = self._text.decode("utf-8", "replace")
        elif self._sink == self._write_image:
            self._close_file()
        self._sink = None

    def _end(self) -> None:
        self.complete = True

    def _close_file(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()  # flushes: a full disk can show here too
            except OSError as exc:
                raise out_of_room(exc) from None


class Uploads:
    """What the upload endpoint shares: where bodies are spooled, and the limits at once."""

    def __init__(self, directory: Path, *, open_file: OpenFile = open_spool_file,
                 slots: UploadSlots | None = None, decodes: FairTurns | None = None) -> None:
        self.directory = directory
        self.open_file = open_file
        self.slots = slots or UploadSlots()
        self.decodes = decodes or FairTurns()
        with contextlib.suppress(OSError):  # a read-only directory: /readyz says so
            directory.mkdir(parents=True, exist_ok=True)

    def spool(self, content_type: str, limit: int) -> FormSpool:
        return FormSpool(content_type, self.directory, limit, open_file=self.open_file)

    def can_write(self) -> bool:
        """Whether a file can be written under the data directory now (readiness)."""
        try:
            with tempfile.NamedTemporaryFile(dir=self.directory, prefix="ready-") as probe:
                probe.write(b"ok")
                probe.flush()
        except OSError as exc:
            log.error("the data directory cannot be written: %s", exc)
            return False
        return True

    def remove_leftovers(self, *, older_than: float = LEFTOVER_SECONDS) -> None:
        """Spool files a crash left behind. Only old ones: another process may be uploading."""
        if not self.directory.is_dir():
            return
        cutoff = time.time() - older_than
        for leftover in self.directory.glob("upload-*.part"):
            with contextlib.suppress(OSError):
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
