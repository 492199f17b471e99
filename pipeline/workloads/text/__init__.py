"""Text workloads: Tiny Shakespeare as characters (`shakespeare`) and a decoder-only transformer over it (`gpt`)."""
from pipeline.workloads.text.gpt import GPT, GPTConfig
from pipeline.workloads.text.shakespeare import Corpus, load_corpus
