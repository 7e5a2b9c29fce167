"""Candidate captions beyond the vocabulary: a local language model proposes attributes for each failure mode.

An LLM is asked, per mode, for visual attributes that could describe the failing images, given the class name and
the mode's best vocabulary captions (LLM-proposed attributes: Chegini & Feizi 2023; LADDER). Its phrases join the
candidates and CLIP ranks them like the rest (`blindspot.captioning.Captioner`). Output that is empty, too long,
not printable text, repeated, or only the class name is dropped and counted in `mode.extra["proposer"]`.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import torch

from .modes import FailureMode

log = logging.getLogger(__name__)

DEFAULT_PROMPT = (
    "Photos of a {cls} that an image classifier gets wrong are best described as: {captions}.\n"
    "List other short visual attributes of these photos (background, place, colour, lighting, weather, "
    "viewpoint, objects nearby), one per line:\n-"
)
# kinds of dropped output; over_limit: past max_phrases
JUNK_KINDS = ("empty", "too_long", "non_printable", "repeat", "class_name", "over_limit")


def none():
    """No proposer (`proposer=none`): captions come from the vocabulary alone."""
    return None


class LLMProposer:
    """Asks a local causal language model (transformers text-generation pipeline) for candidate attributes."""

    def __init__(self, model: str, max_new_tokens: int = 48, num_return_sequences: int = 2, max_phrases: int = 12,
                 max_words: int = 8, max_chars: int = 60, do_sample: bool = True, temperature: float = 0.8,
                 seed: int = 0, device: str = "cpu", prompt: str = DEFAULT_PROMPT, config_key: str = "proposer.model"):
        if max_new_tokens < 1 or num_return_sequences < 1 or max_phrases < 1 or max_words < 1 or max_chars < 1:
            raise ValueError("proposer: max_new_tokens, num_return_sequences, max_phrases, max_words and max_chars "
                             "must be >= 1")
        try:
            if "{cls}" not in prompt:
                raise KeyError("cls")
            prompt.format(cls="x", captions="y")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"proposer.prompt must use {{cls}} and may use {{captions}}, no other braces ({err!r})") \
                from None
        self.model, self.config_key = str(model), config_key
        self.max_new_tokens, self.num_return_sequences = max_new_tokens, num_return_sequences
        self.max_phrases = max_phrases
        self.max_words, self.max_chars, self.do_sample, self.temperature = max_words, max_chars, do_sample, temperature
        self.seed, self.device, self.prompt = seed, device, prompt
        self.check()
        self._pipe = None
        self.totals: Counter = Counter()  # over all calls: proposed, kept and each junk kind

    def check(self) -> None:
        """Fail now, naming proposer.model, unless the folder holds a causal LM config and a tokenizer."""
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        key, path = self.config_key, Path(self.model)
        if not path.is_dir():
            raise FileNotFoundError(f"proposer model folder {path} not found: set {key} to a local folder with a "
                                    "causal language model saved by transformers (config.json, weights, tokenizer); "
                                    "download one elsewhere with `huggingface-cli download <id> --local-dir <folder>`")
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=True)
        except Exception as err:  # transformers raises OSError / ValueError / KeyError for foreign folders
            raise ValueError(f"{key}={path} is not a transformers model folder ({type(err).__name__}: {err})") from err
        if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise ValueError(f"{key}={path} holds a {config.model_type!r} model, not a causal language model "
                             "(text generation needs e.g. GPT-2, Llama, Qwen, Phi): point proposer.model at one")
        if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json",
                                                  "tokenizer.model")):
            raise ValueError(f"{key}={path} has no tokenizer files: save the tokenizer into the same folder")

    @property
    def pipe(self):
        """The text-generation pipeline (loaded on first use, from local files only)."""
        if self._pipe is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

            try:
                tokenizer = AutoTokenizer.from_pretrained(self.model, local_files_only=True)
                model = AutoModelForCausalLM.from_pretrained(self.model, local_files_only=True)
            except Exception as err:
                raise ValueError(f"could not load the causal language model at {self.config_key}={self.model} "
                                 f"({type(err).__name__}: {err})") from err
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
            self._pipe = pipeline("text-generation", model=model, tokenizer=tokenizer, device=self.device)
            log.info("proposer: loaded %s", self.model)
        return self._pipe

    def ask(self, cls: str, captions: list[str]) -> list[str]:
        """The model's raw continuations of the prompt for one class and its current captions."""
        prompt = self.prompt.format(cls=cls, captions="; ".join(captions) or f"a photo of a {cls}")
        with torch.random.fork_rng(devices=[]):  # sampling must not move the training RNG
            torch.manual_seed(self.seed)
            sampling = {"do_sample": True, "temperature": self.temperature} if self.do_sample else {
                "do_sample": False, "num_beams": self.num_return_sequences}
            out = self.pipe(prompt, max_new_tokens=self.max_new_tokens, num_return_sequences=self.num_return_sequences,
                            return_full_text=False, pad_token_id=self.pipe.tokenizer.pad_token_id, **sampling)
        return [o["generated_text"] for o in out]

    def clean(self, cls: str, texts: list[str]) -> tuple[list[str], Counter]:
        """Phrases from raw generations (one per line / comma), junk dropped and counted by kind."""
        stats: Counter = Counter({k: 0 for k in JUNK_KINDS})
        kept: list[str] = []
        seen: set[str] = set()
        bare = {cls.lower(), f"a {cls.lower()}", f"an {cls.lower()}", f"the {cls.lower()}"}
        for text in texts:
            for raw in re.split(r"[\n,;]+", text):
                stats["proposed"] += 1
                phrase = re.sub(r"^\s*(?:[-*\u2022]+|\d+[.)])\s*", "", raw).strip().strip("\"'`.").strip()
                if not phrase:
                    stats["empty"] += 1
                elif not phrase.isprintable() or not re.search(r"[^\W\d_]", phrase) or re.search(r"[{}<>\[\]|\\]",
                                                                                                 phrase):
                    stats["non_printable"] += 1
                elif len(phrase) > self.max_chars or len(phrase.split()) > self.max_words:
                    stats["too_long"] += 1
                elif " ".join(phrase.lower().split()) in bare:
                    stats["class_name"] += 1
                elif " ".join(phrase.lower().split()) in seen:
                    stats["repeat"] += 1
                elif len(kept) >= self.max_phrases:
                    stats["over_limit"] += 1
                else:
                    seen.add(" ".join(phrase.lower().split()))
                    kept.append(" ".join(phrase.split()))
        stats["kept"] = len(kept)
        return kept, stats

    def __call__(self, cls: str, mode: FailureMode) -> list[str]:
        """Candidate attribute phrases for a mode; the counts go into `mode.extra["proposer"]`."""
        kept, stats = self.clean(cls, self.ask(cls, [c for c, _ in mode.captions]))
        self.totals.update(stats)
        mode.extra.setdefault("proposer", {}).update(
            {"model": self.model, "phrases": kept, "dropped": {k: stats[k] for k in JUNK_KINDS},
             "proposed": stats["proposed"], "kept": stats["kept"]})
        log.info("proposer: %s: %d phrase(s) kept of %d (dropped %s)", mode.mode_id or cls, stats["kept"],
                 stats["proposed"], {k: stats[k] for k in JUNK_KINDS if stats[k]})
        return kept
