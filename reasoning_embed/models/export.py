"""Export an encoder as a Hugging Face directory that sentence-transformers loads and embeds with exactly as
the framework does.

- ``config.json`` carries ``"is_causal": false`` (bidirectional attention, read natively by transformers).
- Per-side length limits: the ``Transformer`` module stores ``query_length`` and ``document_length`` (the
  encoder's ``max_query_length`` / ``max_passage_length``), which sentence-transformers applies under
  ``task="query"`` / ``task="document"``: ``encode_query`` / ``encode_document``, or ``encode(...,
  prompt_name="query", task="query")``. ``max_seq_length`` (a plain ``encode`` without a task) is the
  larger of the two, so any text within its side's limit embeds the same either way.
- ``prompts``: ``{"query": "Instruct: <the run's instruction>\nQuery: ", "document": ""}``;
  ``encode_query(q)`` and ``encode(q, prompt_name="query")`` add it.
- Pooling excludes the prompt's tokens (``include_prompt: false``). Under the ``prompt_tokens`` boundary
  that is sentence-transformers' stock rule; under ``offsets`` the export ships ``reasoning_embed_st.py``
  (a Transformer and a Pooling that find the boundary from character offsets), loaded with
  ``trust_remote_code=True``. A query with no text token after its prompt embeds as the zero vector on
  both sides.
- ``reasoning_embed.json`` records the encoder settings (read back by :func:`read_export_settings`) and
  ``README.md`` is a model card: backbone, recipe, data, held-out metrics, how to load.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from reasoning_embed.models.pooling import ST_POOLING_MODE, pooling_from_st
from reasoning_embed.utils.io import atomic_dir

# the recipe's query instruction for a task that has none of its own (evaluation's instruction table defaults to it)
DEFAULT_INSTRUCTION = "Given a query, retrieve the most relevant passage from the given passage"
SETTINGS_FILE = "reasoning_embed.json"
ST_MODULES_FILE = "reasoning_embed_st.py"
EMPTY_TEXT_RULE = "zero_vector"  # a text with no token (after its instruction, for a query) embeds as 0 (both sides)
# the build_encoder keywords an export records
_SETTINGS_KEYS = ("attention", "pooling", "normalize", "max_query_length", "max_passage_length", "query_template",
                  "add_special_tokens", "prompt_boundary")


def encoder_settings(encoder) -> dict:
    """The settings that decide how ``encoder`` embeds (``build_encoder`` keyword names)."""
    tok = encoder.tokenizer
    return {"attention": encoder.attention, "pooling": encoder.pooling, "normalize": bool(encoder.normalize),
            "max_query_length": int(tok.max_query_length), "max_passage_length": int(tok.max_passage_length),
            "query_template": tok.query_template, "add_special_tokens": bool(tok.add_special_tokens),
            "prompt_boundary": getattr(tok, "prompt_boundary", "prompt_tokens")}


def _st_modules(encoder, hf_dir: Path, settings: dict, dtype):
    """The sentence-transformers module chain for ``encoder`` (stock modules, or ours for ``offsets``)."""
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    from reasoning_embed.models import st_modules

    transformer_cls, pooling_cls = Transformer, Pooling
    if settings["st_modules"]:
        transformer_cls = st_modules.PipelineTokenizerTransformer
    if settings["prompt_boundary"] == "offsets":
        transformer_cls, pooling_cls = st_modules.OffsetBoundaryTransformer, st_modules.RowPromptPooling
    kwargs = dict(max_seq_length=max(settings["max_query_length"], settings["max_passage_length"]),
                  query_length=settings["max_query_length"], document_length=settings["max_passage_length"],
                  processing_kwargs={"text": {"add_special_tokens": settings["add_special_tokens"]}},
                  model_kwargs={"dtype": dtype})
    modules = [transformer_cls(str(hf_dir), **kwargs),
               pooling_cls(encoder.dim, ST_POOLING_MODE[encoder.pooling], include_prompt=False)]
    if encoder.normalize:
        modules.append(Normalize())
    return modules


def needs_st_modules(encoder, hf_dir: Path, boundary: str) -> bool:
    """Whether stock sentence-transformers would embed differently: the ``offsets`` boundary, or a tokenizer
    whose pre-tokeniser ``AutoTokenizer`` replaces (``st_modules.PipelineTokenizerTransformer``)."""
    from transformers import AutoTokenizer

    from reasoning_embed.models.backbone import pre_tokenizer_of

    if boundary == "offsets":
        return True
    return pre_tokenizer_of(AutoTokenizer.from_pretrained(hf_dir)) != pre_tokenizer_of(encoder.tokenizer.hf)


def _ship_st_modules(st_dir: Path) -> None:
    """Under ``offsets`` or a replaced tokenizer pipeline: copy the module file next to the model and point
    modules.json at it, so the export loads (``trust_remote_code=True``) where reasoning_embed is not installed."""
    from reasoning_embed.models import st_modules

    shutil.copyfile(st_modules.__file__, st_dir / ST_MODULES_FILE)
    modules_json = st_dir / "modules.json"
    modules = json.loads(modules_json.read_text())
    for m in modules:
        if m["type"].startswith("reasoning_embed.models.st_modules."):
            m["type"] = Path(ST_MODULES_FILE).stem + "." + m["type"].rsplit(".", 1)[1]
    modules_json.write_text(json.dumps(modules, indent=2))


def export_encoder(encoder, out_dir: str | Path, instruction: str | None = None, card: dict | None = None) -> Path:
    """Write ``encoder`` to ``out_dir`` (atomically: a temporary directory renamed into place).

    ``instruction`` fills the query prompt (default: the generic retrieval instruction); ``card`` adds the
    run's facts to the model card (``backbone``, ``recipe``, ``data``, ``metrics``: any JSON-able values)."""
    from sentence_transformers import SentenceTransformer

    from reasoning_embed.models.lora import merged_backbone

    if instruction is None:
        instruction = DEFAULT_INSTRUCTION
    out_dir = Path(out_dir)
    # the backbone is staged in a scratch directory; sentence-transformers copies it into the export
    with atomic_dir(out_dir) as st_dir, tempfile.TemporaryDirectory(dir=out_dir.parent) as scratch:
        hf_dir = Path(scratch) / "hf"
        backbone = merged_backbone(encoder.backbone)
        backbone.config.is_causal = encoder.attention == "causal"
        backbone.save_pretrained(hf_dir)
        encoder.tokenizer.hf.save_pretrained(hf_dir)
        settings = encoder_settings(encoder)
        settings["st_modules"] = needs_st_modules(encoder, hf_dir, settings["prompt_boundary"])
        prompts = {"query": encoder.tokenizer.prompt(instruction), "document": ""}
        st = SentenceTransformer(modules=_st_modules(encoder, hf_dir, settings, backbone.dtype), device="cpu",
                                 prompts=prompts)
        st.save(str(st_dir))
        if settings["st_modules"]:
            _ship_st_modules(st_dir)
        record = {**settings, "empty_text": EMPTY_TEXT_RULE, "instruction": instruction, "prompts": prompts}
        (st_dir / SETTINGS_FILE).write_text(json.dumps(record, indent=2) + "\n")
        (st_dir / "README.md").write_text(model_card(record, card or {}))
    return out_dir


def model_card(settings: dict, card: dict) -> str:
    """README.md of an export: what it is, how it was trained, how well, and how to load it."""
    remote = ", trust_remote_code=True" if settings["st_modules"] else ""
    facts = "\n".join(f"- **{key}**: `{json.dumps(value, default=str)}`" for key, value in card.items())
    return f"""# Embedding model trained with reasoning-embed

{facts or "- (no run facts recorded)"}

## Encoder settings
- attention: {settings["attention"]}; pooling: {settings["pooling"]} over the text's tokens (the instruction's
  tokens are attended to, not averaged; boundary rule `{settings["prompt_boundary"]}`); L2-normalised:
  {settings["normalize"]}
- queries: `{settings["query_template"]!r}` + text, at most {settings["max_query_length"]} tokens; passages bare, at
  most {settings["max_passage_length"]} tokens; special tokens added: {settings["add_special_tokens"]}
- a query with no token after its instruction embeds as the zero vector

## Load
```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("<this directory>"{remote})
q = model.encode_query(["how do I parse a date?"])           # the "query" prompt, {settings["max_query_length"]}-token limit
p = model.encode_document(["datetime.strptime parses ..."])   # no prompt, {settings["max_passage_length"]}-token limit
```
`model.encode(q, prompt_name="query")` adds the same prompt; without `task="query"` it truncates at the longer
limit (`max_seq_length`), so only queries longer than {settings["max_query_length"]} tokens differ. For another
instruction: `model.encode_query(q, prompt="Instruct: ...\\nQuery: ")`.
In reasoning-embed: `python -m reasoning_embed.evaluate model=<this directory> benchmark=...`.
"""


# ------------------------------------------------------------------------------------------------ reading
# The one place that recognises an export of this project and reads its settings: every loader (training
# resume, evaluation, HRSA, mining references, the HRSA callback) goes through these two functions.


def _json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def is_export(model_dir: str | Path) -> bool:
    """An export of this project: a sentence-transformers directory whose ``config.json`` records
    ``is_causal`` (``export_encoder`` always writes it; a foreign sentence-transformers model does not)."""
    model_dir = Path(model_dir)
    return (model_dir / "modules.json").is_file() and "is_causal" in _json(model_dir / "config.json")


def ships_st_modules(model_dir: str | Path) -> bool:
    """Whether an export carries ``reasoning_embed_st.py`` (then it loads with ``trust_remote_code=True``)."""
    return (Path(model_dir) / ST_MODULES_FILE).is_file()


def load_export(model_dir: str | Path, device: str = "cpu"):
    """``SentenceTransformer`` of an export, trusting the module file only when the export ships one."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device=device, trust_remote_code=ships_st_modules(model_dir))


def read_export_settings(model_dir: str | Path) -> dict:
    """How a sentence-transformers directory (ours or foreign) embeds, as ``build_encoder`` keywords:
    pooling and normalisation from its modules, the length limit from ``sentence_bert_config.json`` (or the
    tokenizer's ``model_max_length``, where sentence-transformers 6 keeps it), attention from ``is_causal``.
    A foreign model's tokenizer adds its special tokens, as sentence-transformers does. An export that has
    ``reasoning_embed.json`` (every export since per-side limits) is read from it alone: the per-side limits,
    query template and instruction-boundary rule it was trained with."""
    model_dir = Path(model_dir)
    record = _json(model_dir / SETTINGS_FILE)
    if record:  # an export that records its settings: exactly those
        return {key: record[key] for key in _SETTINGS_KEYS if key in record}
    out: dict = {}
    modules = _json(model_dir / "modules.json") if (model_dir / "modules.json").is_file() else []
    if modules:
        out["normalize"] = any(m.get("type", "").endswith("Normalize") for m in modules)
    for m in modules:
        if m.get("type", "").endswith("Pooling"):
            pcfg = _json(model_dir / m.get("path", "") / "config.json")
            pooling = pooling_from_st(pcfg)
            if pooling:
                out["pooling"] = pooling
    max_len = _json(model_dir / "sentence_bert_config.json").get("max_seq_length")
    if not max_len:
        max_len = _json(model_dir / "tokenizer_config.json").get("model_max_length")
    if max_len and int(max_len) < 1_000_000:
        out["max_query_length"] = out["max_passage_length"] = int(max_len)
    is_causal = _json(model_dir / "config.json").get("is_causal")
    if is_causal is not None:
        out["attention"] = "causal" if is_causal else "bidirectional"
    if modules and not is_export(model_dir):
        out["add_special_tokens"] = True
    return out
