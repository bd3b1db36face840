"""Random models built offline from configs, with tokenizers made here: the tests' fixtures and
benchmarks/gpu_check.py (which runs where neither a model hub nor a bundled model exists) build theirs here.

No pytest import: the GPU check imports this module on a machine that runs no tests.
"""

from __future__ import annotations

from pathlib import Path

_CHAT_TEXT = (
    "yes no Yes No the a cat dog sat on mat is are why how what does do bird fish swims flies red blue green "
    "big small one two three question answer passage query relevant document about and or not of to in it"
)
CHAT_WORDS = _CHAT_TEXT.split()
CHAT_SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "<s>{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

BERT_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BERT_VOCAB_SIZE = 30522
"""bert-base-uncased's (and MiniLM's) vocabulary size: the embedding matrix a real encoder trains."""

ENCODER_SHAPES = {
    "minilm-l6": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536},
    "bert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
}
"""BERT shapes: all-MiniLM-L6-v2's, bert-base's (e5-base-v2's), and a 2-layer, 32-d one for CPU tests."""


def chat_tokenizer():
    """A word-level tokenizer over CHAT_WORDS with a chat template; `<s>` starts every plain prompt."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(CHAT_SPECIAL + CHAT_WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=CHAT_SPECIAL[4:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen2_tokenizer():
    """Qwen2's own tokenizer class (byte-level BPE, which AutoTokenizer picks for a qwen2 model) over a vocabulary
    made here: the byte alphabet, and each of CHAT_WORDS after a space (` yes`) as one token. Its merges join a
    word's bytes left to right only, so no merge of one word can split another."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    vocab = {token: i for i, token in enumerate(QWEN_SPECIAL + sorted(ByteLevel.alphabet()))}
    merges = []
    for word in CHAT_WORDS:
        piece = "\u0120"  # byte-level's space
        for char in word:
            if piece + char not in vocab:
                merges.append((piece, char))
                vocab[piece + char] = len(vocab)
            piece += char
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, additional_special_tokens=QWEN_SPECIAL[1:])
    tokenizer.chat_template = QWEN_TEMPLATE
    return tokenizer


def save_causal_lm(folder: Path, architecture: str = "llama", seed: int = 0, **sizes) -> str:
    """A random causal LM saved with its tokenizer under `folder`: `llama` over `chat_tokenizer`, or `qwen2`
    over `qwen2_tokenizer`. The default sizes are 2 layers of 32 dimensions with a wide initialisation (sharp
    logits: greedy decoding meets no near-ties, so batch-invariance is testable even in bf16)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    classes = {
        "llama": (LlamaConfig, LlamaForCausalLM, chat_tokenizer),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM, qwen2_tokenizer),
    }
    config_class, model_class, make_tokenizer = classes[architecture]
    tokenizer = make_tokenizer()
    shape = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "initializer_range": 0.5,
        **sizes,
    }
    special = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id}
    config = config_class(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, **special, **shape)
    torch.manual_seed(seed)
    model_class(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def encoder_words(count: int) -> list[str]:
    """`count` distinct one-token words (`w0`, `w1`, ...) of `wordpiece_tokenizer`'s vocabulary."""
    return [f"w{i}" for i in range(count)]


def wordpiece_tokenizer(size: int = BERT_VOCAB_SIZE):
    """A BERT tokenizer whose vocabulary is BERT's special tokens and `size - 5` words `w0`, `w1`, ...: each
    word is one token, so a text's length in tokens is known from its words."""
    from transformers import BertTokenizerFast

    tokens = BERT_SPECIAL + encoder_words(size - len(BERT_SPECIAL))
    return BertTokenizerFast(vocab={token: i for i, token in enumerate(tokens)})  # transformers 5 reads `vocab`


def save_sentence_encoder(
    folder: Path,
    tokenizer,
    shape: dict,
    max_seq_length: int = 64,
    dtype: str = "float32",
    seed: int = 0,
    **overrides,
) -> str:
    """A random BERT of `shape` (`ENCODER_SHAPES`) over `tokenizer`'s vocabulary as a sentence-transformers
    folder (mean pooling, normalised) under `folder`/st; returns its path."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=max(128, max_seq_length), **shape)
    config.update(overrides)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(folder / "bert")
    tokenizer.save_pretrained(folder / "bert")
    word = models.Transformer(str(folder / "bert"), max_seq_length=max_seq_length)
    pooling = models.Pooling(config.hidden_size, "mean")
    model = SentenceTransformer(modules=[word, pooling, models.Normalize()], device="cpu")
    model.to(getattr(torch, dtype)).save(str(folder / "st"))
    return str(folder / "st")
