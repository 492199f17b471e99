"""Tiny Shakespeare at the character level, as nanoGPT's `shakespeare_char` uses it: the corpus found in
`data_dir` or downloaded from its public URL, checked against its sha256 either way, every character a token,
the first 90% for training and the last 10% for validation."""
from __future__ import annotations

import hashlib
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.core.errors import UsageError

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
FILE = "input.txt"
TRAIN_SHARE = 0.9
DOWNLOAD_TIMEOUT_S = 30


@dataclass(frozen=True)
class Corpus:
    """The text as token ids, its vocabulary (sorted characters) and the split point."""

    vocabulary: str
    tokens: torch.Tensor  # int64, one id per character
    split: int  # tokens[:split] train, tokens[split:] validation


def _candidates(data_dir: Path) -> list[Path]:
    return [data_dir / FILE, data_dir / "tinyshakespeare" / FILE]


def _download(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / FILE
    try:
        with urllib.request.urlopen(URL, timeout=DOWNLOAD_TIMEOUT_S) as answer:
            data = answer.read()
    except OSError as error:
        raise UsageError(f"data_dir: no {FILE} in {folder} and the download from {URL} failed ({error}); "
                         "put Tiny Shakespeare's input.txt there, or set data_dir to a folder that holds it") from None
    target.write_bytes(data)
    return target


def load_corpus(data_dir: str | Path, download: bool = True) -> Corpus:
    """The corpus from `data_dir` (input.txt there or in tinyshakespeare/), else downloaded there; one
    UsageError line when it is missing, unreadable or not the published file."""
    folder = Path(data_dir)
    found = next((path for path in _candidates(folder) if path.is_file()), None)
    if found is None:
        if not download:
            raise UsageError(f"data_dir: no {FILE} in {folder} (download=false); put Tiny Shakespeare there")
        found = _download(folder)
    data = found.read_bytes()
    if hashlib.sha256(data).hexdigest() != SHA256:
        raise UsageError(f"data_dir: {found} is not Tiny Shakespeare (its sha256 differs from {SHA256[:12]}...)")
    text = data.decode("utf-8")
    vocabulary = "".join(sorted(set(text)))
    index = {char: position for position, char in enumerate(vocabulary)}
    tokens = torch.tensor([index[char] for char in text], dtype=torch.long)
    return Corpus(vocabulary, tokens, int(len(tokens) * TRAIN_SHARE))


def window_batch(tokens: torch.Tensor, generator: torch.Generator, batch_size: int,
                 context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of `context` tokens and the same windows shifted by one (the next characters)."""
    starts = torch.randint(len(tokens) - context - 1, (batch_size,), generator=generator)
    rows = starts[:, None] + torch.arange(context + 1)
    windows = tokens[rows]
    return windows[:, :-1], windows[:, 1:]
