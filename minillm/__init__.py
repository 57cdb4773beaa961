"""minillm: a GPT built from scratch, one component per lesson.

Each module is generated from its lesson notebook (see the course map in README.md);
this file re-exports the public names, so `import minillm` is all an experiment needs.
"""
__version__ = "0.1.0"

# 01 · the big picture
from minillm.corpus import (CorpusError, bigram_counts, bigram_loss, corpus_path, data_dir,
                            tiny_shakespeare, train_val_split)

# 02 · tokenization
from minillm.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer, tokenizer_from_dict
