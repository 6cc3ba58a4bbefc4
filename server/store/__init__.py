"""Storage: one interface (base.Store), an embedded SQLite backend, and room for MongoDB."""

from server.store.base import DuplicateMessageId, Store, StoreUnavailable
from server.store.models import Conversation, Event, KnowledgeDocument, Message, ProactiveMessage, Site, Source

__all__ = [
    "Conversation", "DuplicateMessageId", "Event", "KnowledgeDocument", "Message",
    "ProactiveMessage", "Site", "Source", "Store", "StoreUnavailable",
]
