"""Shared test set-up. Set before anything imports huggingface_hub, which reads it once: no test may use the hub."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_processor():
    from glimpserl.models.tiny import build_tiny_processor

    return build_tiny_processor("qwen2_5_vl")


@pytest.fixture(scope="session")
def tiny_qwen2_processor():
    from glimpserl.models.tiny import build_tiny_processor

    return build_tiny_processor("qwen2_vl")
