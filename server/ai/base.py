"""What every AI provider shares: the request it gets and the chunks it yields."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import AsyncIterator

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
class AnswerRequest:
    site: Site
    question: str
    lang: str
    history: list[Message]
    passages: list[Passage]
    page_url: str | None = None
    page_title: str | None = None


@dataclass
class Answer:
    """What the engine hands the chat service: sources known up front, text as it is produced."""

    chunks: AsyncIterator[str]
    sources: list[Source] = field(default_factory=list)
    handoff: bool = False


class Provider(abc.ABC):
    """Turns a grounded request into text chunks, yielded as soon as each is produced."""

    name: str = "provider"

    @abc.abstractmethod
    def stream(self, request: AnswerRequest) -> AsyncIterator[str]: ...

    async def close(self) -> None:  # noqa: B027 - optional hook
        return None
