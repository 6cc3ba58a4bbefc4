"""What every AI provider shares: the request it gets and the chunks it yields."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Literal

from server.errors import Unavailable
from server.store.models import Message, Site, Source


class AIUnavailable(Unavailable):
    """The model could not be reached or failed; the sentence is safe to show a visitor."""


@dataclass(frozen=True)
class Passage:
    text: str
    source: Source
    score: float


@dataclass(frozen=True)
class Usage:
    """Token counts as the upstream reported them (OpenAI's `usage` object, kept as given)."""

    data: dict[str, Any]


@dataclass(frozen=True)
class AnswerRequest:
    site: Site
    question: str
    lang: str
    history: list[Message]
    passages: list[Passage]
    page_url: str | None = None
    page_title: str | None = None
    # No passage answers it and the site hands such questions to a person (`handoff_when_unsure`):
    # the answer says someone will reply, not that the visitor may ask for one.
    handing_over: bool = False


@dataclass
class Answer:
    """What the engine hands the chat service: sources known up front, text as it is produced.

    `handoff` and `usage` may change while `chunks` is consumed (the model's own handoff signal,
    the upstream's final usage report), so the chat service reads them after the last chunk.
    `relevance` is how well the site's knowledge covers the question, kept to list what it lacks.
    `role` is "system" for notices that are not AI answers (a cap reached), so they do not count
    against the caps themselves.
    """

    chunks: AsyncIterator[str]
    sources: list[Source] = field(default_factory=list)
    # Why the conversation goes to a person (HANDOFF_REASONS in server/store/models.py); None: it
    # does not. The first reason found stands: the model's marker does not hide that the
    # knowledge had nothing on the question.
    handoff_reason: str | None = None
    usage: dict[str, Any] | None = None
    role: Literal["ai", "system"] = "ai"
    # The best relevance of the site's passages to the question (0 to 1), None when not searched.
    relevance: float | None = None

    @property
    def handoff(self) -> bool:
        return self.handoff_reason is not None


class Provider(abc.ABC):
    """Turns a grounded request into text chunks, yielded as soon as each is produced.

    A provider may also yield one `Usage` (usually last); the engine takes it out of the text.
    """

    name: str = "provider"

    @abc.abstractmethod
    def stream(self, request: AnswerRequest) -> AsyncIterator[str | Usage]: ...

    async def close(self) -> None:  # noqa: B027 - optional hook
        return None
