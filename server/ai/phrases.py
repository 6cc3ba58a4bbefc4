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

# Offers a person the way the widget can take it up: asking for one hands over (and the widget
# then asks for an email); without a handoff the widget shows no email field, so none is asked for.
DONT_KNOW = {
    "en": "I'm sorry, I don't know the answer to that. Ask for a person if you'd like someone from "
          "the team to reply here.",
    "fr": "Désolé, je ne connais pas la réponse. Demandez à parler à une personne si vous souhaitez "
          "qu'un membre de l'équipe vous réponde ici.",
    "de": "Das weiß ich leider nicht. Bitten Sie um einen Menschen, wenn Ihnen jemand aus dem Team "
          "hier antworten soll.",
    "es": "Lo siento, no sé la respuesta. Pida hablar con una persona si quiere que alguien del "
          "equipo le responda aquí.",
}
# The same where the site hands such questions to a person itself (`handoff_when_unsure`).
DONT_KNOW_PASSED_ON = {
    "en": "I'm sorry, I don't know the answer to that. I've asked someone from the team to reply here.",
    "fr": "Désolé, je ne connais pas la réponse. J'ai demandé à un membre de l'équipe de vous "
          "répondre ici.",
    "de": "Das weiß ich leider nicht. Ich habe jemanden aus dem Team gebeten, Ihnen hier zu antworten.",
    "es": "Lo siento, no sé la respuesta. He pedido a alguien del equipo que le responda aquí.",
}

# A message that only greets, thanks or says goodbye ("hi", "hello there", "thanks!", "merci
# beaucoup"): nothing to look up, nothing to hand over, no gap in the knowledge. Filler words
# ("there", "so much") may come with those, never alone.
_GREETINGS = frozenset("""
    hi hello hey hiya howdy morning afternoon evening
    bonjour salut bonsoir coucou
    hallo guten servus moin
    hola buenos buenas
""".split())
_THANKS = frozenset("thanks thank thx ty cheers merci danke dank gracias".split())
_GOODBYES = frozenset("bye goodbye revoir wiedersehen tschüss adiós adios luego".split())
_SMALL_TALK_FILLER = frozenset("""
    there good day you a lot very much so all again ok okay how are is it going doing everyone
    great nice and for your help yes yeah well then
    beaucoup bien au tout encore ça va comment allez vous et pour votre aide oui rebonjour
    tag morgen abend schön schon vielen auf noch mal wie geht es ihnen dir und für ihre hilfe ja
    dias días tardes noches muchas muchísimas hasta otra vez qué que tal cómo como está estás y por
    su ayuda sí
""".split())
SMALL_TALK_MAX_WORDS = 6
_LETTERS = re.compile(r"[^\W\d_]+")

GREETING_REPLY = {
    "en": "Hello! What can I help you with?",
    "fr": "Bonjour ! Comment puis-je vous aider ?",
    "de": "Hallo! Wobei kann ich Ihnen helfen?",
    "es": "¡Hola! ¿En qué puedo ayudarle?",
}

THANKS_REPLY = {
    "en": "You're welcome! Ask me anything else.",
    "fr": "Avec plaisir ! N'hésitez pas si vous avez une autre question.",
    "de": "Gern geschehen! Fragen Sie mich gern noch etwas.",
    "es": "¡De nada! Pregúnteme lo que necesite.",
}

GOODBYE_REPLY = {
    "en": "Goodbye! Come back any time.",
    "fr": "Au revoir ! Revenez quand vous voulez.",
    "de": "Auf Wiedersehen! Kommen Sie jederzeit wieder.",
    "es": "¡Adiós! Vuelva cuando quiera.",
}


def small_talk(text: str) -> dict[str, str] | None:
    """The reply to a message that is only a greeting, thanks or goodbye; None for anything else."""
    words = _LETTERS.findall(text.lower())
    if not words or len(words) > SMALL_TALK_MAX_WORDS:
        return None
    if not all(w in _GREETINGS or w in _THANKS or w in _GOODBYES or w in _SMALL_TALK_FILLER
               for w in words):
        return None
    # "thanks, bye" ends the chat; "hi, thanks" does not.
    for kind, reply in ((_GOODBYES, GOODBYE_REPLY), (_THANKS, THANKS_REPLY), (_GREETINGS, GREETING_REPLY)):
        if any(w in kind for w in words):
            return reply
    return None  # filler words alone ("you", "so") are not small talk


HANDING_OVER = {
    "en": "I'm passing you to a person from the team; they will reply here.",
    "fr": "Je vous mets en relation avec une personne de l'équipe ; elle vous répondra ici.",
    "de": "Ich verbinde Sie mit einem Menschen aus dem Team; die Antwort kommt hier.",
    "es": "Le paso con una persona del equipo; le responderá aquí.",
}

# A handoff outside the site's opening hours, or with no operator online (server/opening_hours.py).
AWAY_HANDOFF = {
    "en": "Nobody from the team is available right now. Leave your email below and we'll write back; "
          "meanwhile I can keep answering your questions.",
    "fr": "Personne de l'équipe n'est disponible pour le moment. Laissez votre e-mail ci-dessous et "
          "nous vous répondrons ; en attendant, je peux continuer à répondre à vos questions.",
    "de": "Gerade ist niemand aus dem Team erreichbar. Hinterlassen Sie unten Ihre E-Mail-Adresse, "
          "dann schreiben wir Ihnen; bis dahin beantworte ich gern weiter Ihre Fragen.",
    "es": "Ahora mismo no hay nadie del equipo disponible. Déjenos su correo abajo y le escribiremos; "
          "mientras tanto, puedo seguir respondiendo a sus preguntas.",
}

HUMAN_REQUEST_PHRASES = [
    # en
    "talk to a human", "speak to a human", "talk to a person", "speak to a person",
    "real person", "human agent", "live agent", "talk to someone", "speak to someone",
    "customer service", "operator", "representative",
    # as the visitor answers DONT_KNOW's offer
    "want a person", "need a person", "a person please", "want a human", "need a human",
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
    """True when a phrase appears as whole words ("operator", not "cooperator")."""
    return _without_human_requests(text, extra_phrases)[0]


# Words that may come with a request for a person without asking anything else ("can I please
# talk to a human now?"): such a message is the request alone, nothing for the knowledge to answer.
_REQUEST_FILLER = frozenset("""
    i d want would like to can could may please now just me a an the with someone somebody yes ok
    okay need let get connect speak talk hi hello
    je voudrais veux peux puis s il vous plait plaît
    ich möchte will bitte kann
    quiero puedo por favor
""".split())


def only_asks_for_human(text: str, extra_phrases: list[str] | None = None) -> bool:
    """A request for a person and nothing else ("I want to talk to a human, please"; not "can I
    talk to a human about my invoice?")."""
    found, rest = _without_human_requests(text, extra_phrases)
    return found and all(word in _REQUEST_FILLER for word in rest.split())


def _without_human_requests(text: str, extra_phrases: list[str] | None) -> tuple[bool, str]:
    """Whether the text asks for a person (a phrase as whole words), and its words without those phrases."""
    normalised = " " + " ".join(re.findall(r"\w+", text.lower())) + " "
    found = False
    for phrase in HUMAN_REQUEST_PHRASES + [p for p in (extra_phrases or [])[:200] if isinstance(p, str)]:
        words = " " + " ".join(re.findall(r"\w+", phrase.lower())) + " "
        if words.strip() and words in normalised:
            normalised = normalised.replace(words, " ")
            found = True
    return found, normalised


# What a visitor reads when a cap stops the AI (see server/ai/caps.py). Each offers a person.
CAP_SESSION = {
    "en": "You've reached the limit of answers from the assistant for now. Would you like to talk "
          "to a person? Leave your email and someone from the team will get back to you.",
    "fr": "Vous avez atteint la limite de réponses de l'assistant pour le moment. Voulez-vous parler "
          "à une personne ? Laissez votre e-mail et quelqu'un de l'équipe vous répondra.",
    "de": "Sie haben das Limit an Antworten des Assistenten vorerst erreicht. Möchten Sie mit einem "
          "Menschen sprechen? Hinterlassen Sie Ihre E-Mail-Adresse, dann meldet sich jemand.",
    "es": "Ha alcanzado el límite de respuestas del asistente por ahora. ¿Quiere hablar con una "
          "persona? Déjenos su correo y alguien del equipo le responderá.",
}

CAP_SITE = {
    "en": "The assistant can't answer more questions today. Would you like to talk to a person? "
          "Leave your email and someone from the team will get back to you.",
    "fr": "L'assistant ne peut plus répondre aujourd'hui. Voulez-vous parler à une personne ? "
          "Laissez votre e-mail et quelqu'un de l'équipe vous répondra.",
    "de": "Der Assistent kann heute keine Fragen mehr beantworten. Möchten Sie mit einem Menschen "
          "sprechen? Hinterlassen Sie Ihre E-Mail-Adresse, dann meldet sich jemand.",
    "es": "El asistente no puede responder más preguntas hoy. ¿Quiere hablar con una persona? "
          "Déjenos su correo y alguien del equipo le responderá.",
}

CAP_INPUT = {
    "en": "Your message is too long for the assistant (at most {limit} characters). Please shorten "
          "it, or ask to talk to a person.",
    "fr": "Votre message est trop long pour l'assistant ({limit} caractères au plus). Raccourcissez-le "
          "ou demandez à parler à une personne.",
    "de": "Ihre Nachricht ist für den Assistenten zu lang (höchstens {limit} Zeichen). Bitte kürzen "
          "Sie sie oder bitten Sie darum, mit einem Menschen zu sprechen.",
    "es": "Su mensaje es demasiado largo para el asistente (como máximo {limit} caracteres). "
          "Acórtelo o pida hablar con una persona.",
}
