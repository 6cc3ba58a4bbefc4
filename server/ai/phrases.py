"""Sentences the offline answerer says, and the phrases that mean "let me talk to a person".

Kept as data so a reader sees the whole rule, and so a language is added in one place.
"""

from __future__ import annotations

import re

FOUND_INTRO = {
    "en": "Here is what I found in our help pages:",
    "fr": "Voici ce que j'ai trouvé dans nos pages d'aide :",
    "de": "Das habe ich in unseren Hilfeseiten gefunden:",
    "es": "Esto es lo que encontré en nuestras páginas de ayuda:",
}

DONT_KNOW = {
    "en": "I'm sorry, I don't know the answer to that. Would you like to talk to a person? "
          "Leave your email and someone from the team will get back to you.",
    "fr": "Désolé, je ne connais pas la réponse. Voulez-vous parler à une personne ? "
          "Laissez votre e-mail et quelqu'un de l'équipe vous répondra.",
    "de": "Das weiß ich leider nicht. Möchten Sie mit einem Menschen sprechen? "
          "Hinterlassen Sie Ihre E-Mail-Adresse, dann meldet sich jemand aus dem Team.",
    "es": "Lo siento, no sé la respuesta. ¿Quiere hablar con una persona? "
          "Déjenos su correo y alguien del equipo le responderá.",
}

HANDING_OVER = {
    "en": "I'm passing you to a person from the team; they will reply here.",
    "fr": "Je vous mets en relation avec une personne de l'équipe ; elle vous répondra ici.",
    "de": "Ich verbinde Sie mit einem Menschen aus dem Team; die Antwort kommt hier.",
    "es": "Le paso con una persona del equipo; le responderá aquí.",
}

HUMAN_REQUEST_PHRASES = [
    # en
    "talk to a human", "speak to a human", "talk to a person", "speak to a person",
    "real person", "human agent", "live agent", "talk to someone", "speak to someone",
    "customer service", "operator", "representative",
    # fr
    "parler à un humain", "parler à une personne", "un conseiller", "un opérateur",
    # de
    "mit einem menschen", "echten menschen", "mitarbeiter sprechen",
    # es
    "hablar con una persona", "hablar con un humano", "agente humano",
]


def pick(table: dict[str, str], lang: str) -> str:
    """The entry for `lang` (or its primary subtag), falling back to English."""
    lang = (lang or "en").lower()
    return table.get(lang) or table.get(lang.split("-")[0]) or table["en"]


def asks_for_human(text: str, extra_phrases: list[str] | None = None) -> bool:
    normalised = re.sub(r"\s+", " ", text.lower())
    phrases = HUMAN_REQUEST_PHRASES + [p.lower() for p in (extra_phrases or [])[:200]]
    return any(phrase in normalised for phrase in phrases)
