"""More ways to ask about a sentence: questions whose answer is another span (pure, offline).

``questions.py`` asks about each clause's subject, for the spans after its verb. A user asks the
other way round too, and in other words, and a student trained on one wording of a question
often answers only that wording. So, per clause:

    "The user's neighbour Olu borrowed the ladder on Sunday."
        -> "Who borrowed the ladder on Sunday?", "Who borrowed the ladder?"   (the subject)
    "The Berlin warehouse is managed by Jonas Weber."
        -> "Who is the Berlin warehouse managed by?"                          (the agent)
    "The budget is 48,000 euros, approved by Lars Henriksen."
        -> "Who approved the budget?"
    "The user's son Mateo plays the cello."
        -> "Who is Mateo?", "What is the user's son called?", "What is the user's son's name?"

Like every rule-built question these can come out clumsy; the teacher answers each one from the
text and the grounding filter keeps only answers the text supports.
"""

from __future__ import annotations

import re

from reverie.consolidator.questions import ADVERBS, clauses, lower_first, verb_index
from reverie.consolidator.spans import spans

__all__ = [
    "agent_questions",
    "name_variants",
    "paraphrase_questions",
    "role_names",
    "subject_questions",
]

_PRONOUN_STARTS = {
    "he",
    "she",
    "it",
    "its",
    "his",
    "her",
    "they",
    "we",
    "i",
    "you",
    "to",
    "if",
    "when",
    "this",
}
_CUT_AT = {"on", "in", "at", "for", "from", "every", "with"}
_AGENT = re.compile(
    r"\b(?:(?P<aux>is|are|was|were)\s+)?(?P<verb>[a-z]+ed)\s+by\s+"
    r"(?P<agent>[A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*)"
)
# The role: a determiner and up to four lowercase words ("the user's gym instructor").
_ROLE_NAME = re.compile(
    r"^(?P<role>(?:[Tt]he|[Mm]y|[Oo]ur|[Tt]heir)(?:\s+[a-z][\w'-]*){1,4}),?\s+"
    r"(?P<name>(?:Dr\.\s+)?[A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)?),?$"
)
_NAME_IS_ROLE = re.compile(
    r"^(?P<name>(?:Dr\.\s+)?[A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*)\s+(?:is|was)\s+"
    r"(?P<role>(?:[Tt]he user's|[Mm]y|[Oo]ur|[Tt]heir)\s+[a-z][\w'-]*(?:\s+[a-z][\w'-]*)?)"
)
_ROLE_IS_NAME = re.compile(
    r"^(?P<role>(?:[Tt]he(?: user's)?|[Mm]y|[Oo]ur|[Tt]heir)\s+[a-z][\w'-]*(?:\s+[a-z][\w'-]*)?)"
    r"\s+(?:is|was)\s+(?:called\s+|named\s+)?(?P<name>[A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*)"
)


def _question(text: str) -> str:
    """Single spaces, no stray commas, a capital and a question mark."""
    q = re.sub(r"\s+", " ", text).strip(" ,")
    return q[0].upper() + q[1:] + "?"


def _who_or_what(subject: str) -> str:
    """ "Who" for a subject that names a person-like thing (ends in a name, or is the user)."""
    words = subject.split()
    last = words[-1].strip(",")
    names = [s for s in spans(subject) if s.kind == "name"]
    if last.lower() in ("user", "i", "we") or (names and last[:1].isupper()):
        return "Who"
    if words[0][:1].isupper() and words[0] not in ("The", "My", "Our", "A", "An", "Their"):
        return "Who"  # "Sofia from HR"
    return "What"


def _parts(sentence: str) -> list[str]:
    """The sentence's clauses, also split at semicolons ("...; her clinic is on ...")."""
    sentence = " ".join(sentence.split())  # one space between words: no regex meets a long run
    return [c for part in re.split(r"; ", sentence.rstrip(".;!?")) for c in clauses(part)]


def _split(clause: str) -> tuple[str, list[str]] | None:
    """(subject, predicate words) of a clause with a non-pronoun subject and a verb."""
    words = clause.rstrip(".;!?").split()
    vi = verb_index(words)
    if vi is None or vi == 0 or words[0].lower() in _PRONOUN_STARTS:
        return None
    subject = " ".join(w for w in words[:vi] if w.lower() not in ADVERBS).rstrip(",")
    return (subject, words[vi:]) if subject else None


def subject_questions(clause: str) -> list[str]:
    """Questions the clause answers with its subject: "Who borrowed the ladder (on Sunday)?"."""
    split = _split(clause)
    if split is None:
        return []
    subject, predicate = split
    text = " ".join(predicate)
    # Not "What is called Teodor Vasquez?" (role_names asks that) nor a trailing ", approved
    # by N" (agent_questions asks that), nor a pronoun clause glued on with "and".
    text = re.split(r",?\s+and\s+(?:they|he|she|it|we)\b|,\s*[a-z]+ed\s+by\s", text)[0]
    predicate = text.split()
    if len(predicate) < 2 or re.match(r"(?:is|are|was|were)\s+(?:called|named)\b", text):
        return []
    wh = _who_or_what(subject)
    out = [_question(f"{wh} {text}")]
    # The same without the trailing prepositional phrase ("... the ladder on Sunday").
    cut = next((i for i in range(3, len(predicate)) if predicate[i].lower() in _CUT_AT), None)
    if cut is not None:
        out.append(_question(f"{wh} {' '.join(predicate[:cut])}"))
    return out


def agent_questions(clause: str) -> list[str]:
    """Who did what a passive clause reports: "X is managed by N" -> "Who is X managed by?"."""
    m = _AGENT.search(clause)
    if m is None:
        return []
    aux, verb = m.group("aux"), m.group("verb")
    if aux:  # "X is managed by N": X is everything before the auxiliary
        subject = clause[: m.start()].strip(" ,")
        if not subject or subject.split()[0].lower() in _PRONOUN_STARTS:
            return []
        return [_question(f"Who {aux} {lower_first(subject)} {verb} by")]
    split = _split(clause)  # "X is 48,000 euros, approved by N": X is the clause's subject
    if split is None or m.start() < len(split[0]):
        return []
    return [_question(f"Who {verb} {lower_first(split[0])}")]


def _bare(name: str) -> str:
    return re.sub(r"^(?:Dr\.|The)\s+", "", name)


def role_names(sentence: str) -> list[tuple[str, str]]:
    """(role, name) pairs a sentence states: "the user's son Mateo", "Dr. Miriam Okafor is the
    user's dentist", "my landlord is called Teodor Vasquez"."""
    pairs: list[tuple[str, str]] = []
    for clause in _parts(sentence):
        words = clause.split()
        vi = verb_index(words)
        subject = " ".join(words[:vi]) if vi else clause
        names = {_bare(sp.text) for sp in spans(clause) if sp.kind == "name"}
        for pattern, text in (
            (_ROLE_NAME, subject),
            (_NAME_IS_ROLE, clause),
            (_ROLE_IS_NAME, clause),
        ):
            m = pattern.match(text)
            if m and _bare(m.group("name")) in names:
                pairs.append((lower_first(m.group("role").rstrip(",")), m.group("name")))
    return list(dict.fromkeys(pairs))


def name_variants(role: str) -> list[str]:
    """Ways to ask for the name of ``role`` ("the user's son")."""
    plural = role.endswith("s") and not role.endswith(("ss", "us", "is"))
    possessive = f"{role}'" if plural else f"{role}'s"
    return [
        f"What is {role} called?",
        f"What is {possessive} name?",
        f"What is the name of {role}?",
        f"Who is {role}?",
    ]


def paraphrase_questions(sentence: str) -> list[str]:
    """Every question above for one sentence, without repeats."""
    out: list[str] = []
    for clause in _parts(sentence):
        out += subject_questions(clause) + agent_questions(clause)
    for role, name in role_names(sentence):
        out += [*name_variants(role), f"Who is {name}?"]
    return list(dict.fromkeys(out))
