"""Text inputs shared by every tool that runs the model: a pydoc topic, a file, a prompt.

:func:`resolve_text` picks the text (default: a Python reference topic that ships with
Python, ``pydoc_data.topics``), :func:`encode_text` tokenises it (optionally wrapped by
the chat template), :func:`add_text_arguments` gives every CLI the same flags. No torch:
the tokenizer is passed in.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_PYDOC_TOPIC = "for"  # ~450 tokens: a quick default dump


def pydoc_topic_names() -> list[str]:
    """Names of the Python reference topics that ship with Python (``pydoc_data.topics``)."""
    from pydoc_data.topics import topics

    return sorted(topics)


def pydoc_text(topic: str) -> str:
    """The text of one pydoc topic. Example: ``pydoc_text("with")`` -> 'The "with" statement...'."""
    from pydoc_data.topics import topics

    if topic not in topics:
        raise ValueError(
            f"unknown pydoc topic {topic!r}; choose one of: {', '.join(pydoc_topic_names())}"
        )
    return topics[topic]


def read_text_file(path: str | os.PathLike[str]) -> str:
    """Read a UTF-8 text file; empty or undecodable files are a ValueError."""
    file_path = Path(path)
    if file_path.is_dir():
        raise IsADirectoryError(f"--text-file {file_path} is a folder, not a text file")
    if not file_path.is_file():
        raise FileNotFoundError(f"--text-file {file_path}: no such file")
    try:
        text = file_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"--text-file {file_path} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc
    if not text.strip():
        raise ValueError(f"--text-file {file_path} is empty")
    return text


@dataclass(frozen=True)
class TextSource:
    """The input text and where it came from: kind "pydoc" | "file" | "prompt"."""

    kind: str
    name: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def metadata(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "sha256": self.sha256,
            "chars": len(self.text),
        }


def resolve_text(
    prompt: str | None = None,
    text_file: str | os.PathLike[str] | None = None,
    pydoc_topic: str | None = None,
) -> TextSource:
    """At most one of the three; none -> the default pydoc topic (``DEFAULT_PYDOC_TOPIC``)."""
    given = [name for name, value in (("--prompt", prompt), ("--text-file", text_file),
                                       ("--pydoc-topic", pydoc_topic)) if value is not None]  # fmt: skip
    if len(given) > 1:
        raise ValueError(f"give only one text input, got {' and '.join(given)}")
    if prompt is not None:
        if not prompt.strip():
            raise ValueError("--prompt is empty")
        return TextSource("prompt", "prompt", prompt)
    if text_file is not None:
        return TextSource("file", str(text_file), read_text_file(text_file))
    topic = pydoc_topic or DEFAULT_PYDOC_TOPIC
    return TextSource("pydoc", topic, pydoc_text(topic))


def encode_text(
    tokenizer,
    text: str,
    *,
    chat: bool = False,
    system: str | None = None,
    truncate: int | None = None,
) -> list[int]:
    """Token ids of ``text``; with ``chat`` wrapped as a user turn by the chat template.

    ``truncate`` keeps the first N tokens of the text itself (before any chat wrapping,
    so the template's assistant header survives). ``system`` replaces the template's
    default system prompt.
    """
    if truncate is not None and truncate < 1:
        raise ValueError(f"--truncate must be >= 1 token, got {truncate}")
    if not chat:
        if system is not None:
            raise ValueError("--system needs --chat")
        ids = tokenizer(text)["input_ids"]
        return [int(i) for i in ids[:truncate]]
    if truncate is not None:  # cut the message, not the template around it
        pieces = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(pieces) > truncate:
            text = tokenizer.decode(pieces[:truncate])
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("--chat: this model's tokenizer has no chat template")
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": text}
    ]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def token_pieces(tokenizer, token_ids: Sequence[int]) -> list[str]:
    """Readable text of each token (a piece of a multi-byte character may show as U+FFFD)."""
    return [tokenizer.decode([int(token)]) for token in token_ids]


def add_text_arguments(parser: argparse.ArgumentParser) -> None:
    """``--prompt | --text-file | --pydoc-topic``, ``--chat --system --truncate``."""
    group = parser.add_argument_group("input text (one of; default: pydoc topic "
                                      f"{DEFAULT_PYDOC_TOPIC!r})")  # fmt: skip
    choice = group.add_mutually_exclusive_group()
    choice.add_argument("--prompt", help="the text itself")
    choice.add_argument("--text-file", metavar="PATH", help="a UTF-8 text file")
    choice.add_argument("--pydoc-topic", metavar="NAME",
                        help="a Python reference topic shipped with Python (pydoc_data.topics); "
                             "an unknown name lists them")  # fmt: skip
    group.add_argument(
        "--chat",
        action="store_true",
        help="wrap the text as a user message with the model's chat template",
    )
    group.add_argument("--system", help="system prompt for --chat (default: the template's)")
    group.add_argument(
        "--truncate", type=int, metavar="N", help="keep only the first N tokens of the text"
    )


def text_source_from_args(args: argparse.Namespace) -> TextSource:
    """The :class:`TextSource` chosen by :func:`add_text_arguments`' flags."""
    return resolve_text(args.prompt, args.text_file, args.pydoc_topic)
