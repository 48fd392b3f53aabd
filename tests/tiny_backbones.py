"""Tiny random encoders of the real transformers classes, saved as ordinary model folders.

Nothing here downloads: configs, vocabularies and image processors are built in code. Each builder writes a folder
that `ScotModel.from_backbone` and `ScotProcessor.from_backbone` accept, exactly like a pretrained checkpoint.
"""

import string

import torch
from transformers import (
    BertTokenizer,
    Blip2Config,
    Blip2ForImageTextRetrieval,
    CLIPConfig,
    CLIPModel,
    CLIPTokenizer,
    VisionTextDualEncoderConfig,
    VisionTextDualEncoderModel,
)
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

IMAGE_SIZE = 32
EMBED_DIM = 16
WORDS = (
    "a an the of in on with and red blue green yellow black white dog cat car bird shirt dress hat make it "
    "change to add remove photo small large two three running sitting beach street"
).split()


def _bytes_to_unicode():
    # GPT-2/CLIP byte-level alphabet: printable bytes map to themselves, the rest to code points from 256 upward.
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def clip_tokenizer():
    alphabet = _bytes_to_unicode()
    tokens = ["<|startoftext|>", "<|endoftext|>"] + alphabet + [c + "</w>" for c in alphabet]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[])


def bert_tokenizer(folder):
    vocab_file = folder / "vocab.txt"
    folder.mkdir(parents=True, exist_ok=True)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab_file.write_text("\n".join(special + WORDS + list(string.ascii_lowercase)) + "\n")
    return BertTokenizer(vocab=str(vocab_file))


def _vision(**extra):
    return dict(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        image_size=IMAGE_SIZE, patch_size=8, **extra,
    )


def save_tiny_clip(folder, seed=0):
    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=_vision(),
        projection_dim=EMBED_DIM,
    )
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ).save_pretrained(folder)
    return folder


def save_tiny_blip2(folder, seed=0, num_query_tokens=8):
    torch.manual_seed(seed)
    tokenizer = bert_tokenizer(folder)
    config = Blip2Config(
        vision_config=_vision(),
        qformer_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, cross_attention_frequency=1, max_position_embeddings=64, use_qformer_text_input=True,
            pad_token_id=tokenizer.pad_token_id,
        ),
        text_config=dict(
            model_type="opt", vocab_size=50, hidden_size=16, ffn_dim=32, num_hidden_layers=1,
            num_attention_heads=2, word_embed_proj_dim=16,
        ),
        num_query_tokens=num_query_tokens,
        image_text_hidden_size=EMBED_DIM,
    )
    Blip2ForImageTextRetrieval(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(folder)
    return folder


def save_tiny_dual_encoder(folder, seed=0):
    torch.manual_seed(seed)
    tokenizer = bert_tokenizer(folder)
    config = VisionTextDualEncoderConfig(
        vision_config=dict(model_type="vit", **_vision()),
        text_config=dict(
            model_type="bert", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=37, max_position_embeddings=64,
        ),
        projection_dim=EMBED_DIM,
    )
    VisionTextDualEncoderModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ).save_pretrained(folder)
    return folder


BUILDERS = {"clip": save_tiny_clip, "blip2": save_tiny_blip2, "dual_encoder": save_tiny_dual_encoder}
