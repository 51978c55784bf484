"""LoRA through peft (the recipe's cheaper alternative to full fine-tuning); merged on export."""

from __future__ import annotations


def apply_lora(model, r: int = 16, alpha: int = 32, dropout: float = 0.1, target_modules="all-linear",
               **_ignored):
    from peft import LoraConfig, get_peft_model

    if not isinstance(target_modules, str):
        target_modules = list(target_modules)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, bias="none")
    return get_peft_model(model, config)


def merged_backbone(model):
    """A plain transformers model: LoRA weights merged into a copy if ``model`` is a peft model."""
    import copy

    from peft import PeftModel

    if isinstance(model, PeftModel):
        return copy.deepcopy(model).merge_and_unload()
    return model
