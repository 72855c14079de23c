// The tiny model and schedule the trainer tests share (2 layers, hidden 64, vocab 128, seq 32,
// global batch 8 of micro-batches of 4; warm-up 10, cosine decay over `train_iters`; seed 7).
// The GPU curve tests use it with a longer sequence, a shorter warm-up and their own seed.
#pragma once
#include "train/args.h"

inline llm::TrainArgs tiny_train_args(int64_t train_iters, int64_t seq_length = 32, int64_t lr_warmup_iters = 10,
                                      int64_t seed = 7) {
  llm::TrainArgs a;
  a.num_layers = 2;
  a.hidden_size = 64;
  a.num_attention_heads = 4;
  a.vocab_size = 128;
  a.seq_length = seq_length;
  a.micro_batch_size = 4;
  a.global_batch_size = 8;
  a.lr = 3e-3;
  a.min_lr = 3e-4;
  a.lr_warmup_iters = lr_warmup_iters;
  a.train_iters = train_iters;
  a.seed = seed;
  a.resolve_defaults();
  a.validate();
  return a;
}
