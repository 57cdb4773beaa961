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

# 03 · token embeddings
from minillm.token_embedding import TokenEmbedding, cosine_similarity_matrix, one_hot_lookup

# 04 · position embeddings
from minillm.position_embedding import (LearnedPositionEmbedding, RotaryEmbedding, SinusoidalPositionEmbedding, apply_rope,
                                        rope_cos_sin, sinusoidal_encoding)

# 05 · the combined input embedding
from minillm.input_embedding import InputEmbedding

# 06 · layer normalization
from minillm.layer_norm import LayerNorm, RMSNorm

# 07 · self-attention, one head
from minillm.self_attention import AttentionHead

# 08 · multi-head attention
from minillm.multi_head import MultiHeadAttention

# 09 · query, key, value
from minillm.qkv import FusedQKVAttention, merge_heads, split_heads

# 10 · causal masking
from minillm.causal_mask import CausalAttention, causal_mask

# 11 · attention scores and softmax
from minillm.attention import attention_weights, scaled_dot_product_attention, softmax

# 12 · the complete causal self-attention module
from minillm.causal_self_attention import CausalSelfAttention, KVCache

# 13 · feed-forward networks
from minillm.mlp import MLP, SwiGLU

# 14 · residual connections
from minillm.residual import PreNormResidual

# 15 · the transformer block
from minillm.block import Block, feed_forward, norm_layer

# 16 · stacking transformer layers
from minillm.stack import TransformerStack, init_gpt2_

# 17 · the output layer and LM head
from minillm.model import GPT, GPTConfig, config_from_gpt2, config_from_llama, parameter_breakdown

# 18 · from logits to text
from minillm.generation import (apply_temperature, generate, generate_text, greedy, logits_to_probs, sample_next,
                                top_k_filter, top_p_filter)

# 19 · scaling
from minillm.scaling import (compute_optimal, forward_flops_per_token, mfu, param_count, training_flops_per_token,
                             training_memory)

# 20 · the complete pipeline: training
from minillm.training import (CheckpointError, Trainer, TrainConfig, estimate_loss, get_batch, load_checkpoint,
                              load_model, lr_at, pick_device, preset, save_checkpoint, scan_text, token_file)

# 21 · epilogue: modern families
from minillm.families import family_param_count, kv_cache_bytes_per_token, llama_steps, llama_style, match_params
