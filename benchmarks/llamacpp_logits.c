/*
 * Logits of a GGUF model computed by llama.cpp, for memmamba's output-equality check.
 *
 * usage: llamacpp_logits MODEL.gguf TOKENS.bin OUT.bin [--all] [--n-batch N] [--n-ubatch N]
 *                        [--threads T] [--verbose]
 *
 * TOKENS.bin holds the prompt as little-endian int32 token ids. The prompt is decoded in
 * calls of at most n_batch tokens (default: the whole prompt in one call), each split by
 * llama.cpp into micro-batches of n_ubatch tokens (default 512). OUT.bin receives float32
 * logits, row-major: (n_tokens, n_vocab) with --all, else (1, n_vocab) for the last token.
 * One JSON line on stdout describes what was written.
 *
 * Written against the public llama.h of the llama.cpp vendored in llama-cpp-python 0.3.36
 * (llama_model_load_from_file, llama_init_from_model, llama_batch_init, llama_get_logits_ith).
 * Build it with `memmamba bench llamacpp` (or see memmamba/bench/llamacpp_build.py).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

static void quiet_log(enum ggml_log_level level, const char *text, void *user_data) {
    (void)user_data;
    if (level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

static int fail(const char *what) {
    fprintf(stderr, "llamacpp_logits: %s\n", what);
    return 1;
}

static int32_t *read_tokens(const char *path, int32_t *n_out) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (size <= 0 || size % (long)sizeof(int32_t) != 0) {
        fclose(f);
        return NULL;
    }
    int32_t n = (int32_t)(size / (long)sizeof(int32_t));
    int32_t *ids = malloc((size_t)size);
    if (ids && fread(ids, sizeof(int32_t), (size_t)n, f) != (size_t)n) {
        free(ids);
        ids = NULL;
    }
    fclose(f);
    *n_out = n;
    return ids;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr,
                "usage: %s MODEL.gguf TOKENS.bin OUT.bin [--all] [--n-batch N] [--n-ubatch N] "
                "[--threads T] [--verbose]\n",
                argv[0]);
        return 2;
    }
    const char *model_path = argv[1];
    const char *tokens_path = argv[2];
    const char *out_path = argv[3];
    int all_positions = 0;
    int verbose = 0;
    int32_t n_batch = 0;
    int32_t n_ubatch = 512;
    int32_t threads = 2;
    for (int i = 4; i < argc; i++) {
        if (strcmp(argv[i], "--all") == 0) {
            all_positions = 1;
        } else if (strcmp(argv[i], "--verbose") == 0) {
            verbose = 1;
        } else if (strcmp(argv[i], "--n-batch") == 0 && i + 1 < argc) {
            n_batch = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--n-ubatch") == 0 && i + 1 < argc) {
            n_ubatch = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            threads = atoi(argv[++i]);
        } else {
            fprintf(stderr, "llamacpp_logits: unknown argument %s\n", argv[i]);
            return 2;
        }
    }

    int32_t n_tokens = 0;
    int32_t *ids = read_tokens(tokens_path, &n_tokens);
    if (!ids || n_tokens == 0) {
        return fail("cannot read the token file (non-empty int32 array expected)");
    }
    if (n_batch <= 0 || n_batch > n_tokens) {
        n_batch = n_tokens;
    }
    if (n_ubatch <= 0 || n_ubatch > n_batch) {
        n_ubatch = n_batch;
    }

    if (!verbose) {
        llama_log_set(quiet_log, NULL);
    }
    llama_backend_init();

    struct llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = 0;
    struct llama_model *model = llama_model_load_from_file(model_path, mparams);
    if (!model) {
        return fail("cannot load the model");
    }
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    const int32_t n_vocab = llama_vocab_n_tokens(vocab);
    for (int32_t i = 0; i < n_tokens; i++) {
        if (ids[i] < 0 || ids[i] >= n_vocab) {
            return fail("token id out of the model's vocabulary");
        }
    }

    struct llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = (uint32_t)(n_tokens < 512 ? 512 : n_tokens);
    cparams.n_batch = (uint32_t)n_batch;
    cparams.n_ubatch = (uint32_t)n_ubatch;
    cparams.n_seq_max = 1;
    cparams.n_threads = threads;
    cparams.n_threads_batch = threads;
    cparams.no_perf = 1;
    struct llama_context *ctx = llama_init_from_model(model, cparams);
    if (!ctx) {
        return fail("cannot create the context");
    }

    const int32_t n_rows = all_positions ? n_tokens : 1;
    float *out = malloc((size_t)n_rows * (size_t)n_vocab * sizeof(float));
    struct llama_batch batch = llama_batch_init(n_batch, 0, 1);
    if (!out) {
        return fail("out of memory");
    }
    int32_t row = 0;
    for (int32_t start = 0; start < n_tokens; start += n_batch) {
        int32_t n = n_tokens - start < n_batch ? n_tokens - start : n_batch;
        batch.n_tokens = n;
        for (int32_t j = 0; j < n; j++) {
            int32_t pos = start + j;
            batch.token[j] = ids[pos];
            batch.pos[j] = pos;
            batch.n_seq_id[j] = 1;
            batch.seq_id[j][0] = 0;
            batch.logits[j] = (int8_t)(all_positions || pos == n_tokens - 1);
        }
        if (llama_decode(ctx, batch) != 0) {
            return fail("llama_decode failed");
        }
        for (int32_t j = 0; j < n; j++) {
            if (!batch.logits[j]) {
                continue;
            }
            const float *logits = llama_get_logits_ith(ctx, j);
            if (!logits) {
                return fail("no logits for a requested position");
            }
            memcpy(out + (size_t)row * (size_t)n_vocab, logits, (size_t)n_vocab * sizeof(float));
            row++;
        }
    }

    FILE *f = fopen(out_path, "wb");
    if (!f || fwrite(out, sizeof(float), (size_t)row * (size_t)n_vocab, f) !=
                  (size_t)row * (size_t)n_vocab) {
        return fail("cannot write the output file");
    }
    fclose(f);
    printf("{\"n_tokens\": %d, \"n_rows\": %d, \"n_vocab\": %d, \"n_batch\": %d, "
           "\"n_ubatch\": %d, \"threads\": %d}\n",
           n_tokens, row, n_vocab, n_batch, n_ubatch, threads);

    llama_batch_free(batch);
    free(out);
    free(ids);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
