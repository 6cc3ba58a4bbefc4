"""The AI: a knowledge base, an engine with a readable handoff rule, and providers that stream text."""
