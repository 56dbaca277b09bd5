/* The CPU's peak rate of float32 multiply-accumulates: the ceiling any inference runtime works under.

Each thread runs independent chains of fused multiply-adds on the widest vectors the CPU has, enough chains to hide
the instruction's latency. The instruction set is chosen at run time, not at build time, so that one build measures
the right thing on any x86-64 CPU: AVX-512F, else AVX2 with FMA, else portable 16-byte vectors (whatever the build
target gives them: SSE2 multiplies and adds on a baseline x86-64 build). FMA_PEAK_ISA=avx512f, avx2 or portable
forces one, to measure a narrower path on a wider CPU; forcing one the CPU lacks is an error (exit status 2).
Prints the instruction set used and the multiply-accumulates per second, e.g. "avx2 61234567890".
Build and run: gcc -O3 -pthread bench/fma_peak.c -o fma_peak && ./fma_peak THREADS */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#define X86 1
#include <immintrin.h>
#endif

/* A fused multiply-add has a latency of 4 cycles and two can start per cycle: at least 8 chains must be in flight.
12 chains plus the two constants fit in AVX2's 16 vector registers, so no chain spills to memory. */
#define CHAINS 12
#define ROUNDS 100000000L
#define SCALE 1.0000001f
#define OFFSET 1e-9f

/* One instruction set's loop: ROUNDS x CHAINS vector multiply-accumulates; returns their sum, so that the compiler
keeps the loop. */
typedef float (*chains_of_multiply_accumulates)(void);

#ifdef X86
__attribute__((target("avx512f"))) static float avx512f_chains(void) {
    __m512 chains[CHAINS], scale = _mm512_set1_ps(SCALE), offset = _mm512_set1_ps(OFFSET);
    for (int chain = 0; chain < CHAINS; chain++)
        chains[chain] = _mm512_set1_ps(OFFSET * (float)chain);
    for (long round = 0; round < ROUNDS; round++)
        for (int chain = 0; chain < CHAINS; chain++)
            chains[chain] = _mm512_fmadd_ps(chains[chain], scale, offset);
    float sum = 0;
    for (int chain = 0; chain < CHAINS; chain++)
        sum += _mm512_reduce_add_ps(chains[chain]);
    return sum;
}

__attribute__((target("avx2,fma"))) static float avx2_chains(void) {
    __m256 chains[CHAINS], scale = _mm256_set1_ps(SCALE), offset = _mm256_set1_ps(OFFSET);
    for (int chain = 0; chain < CHAINS; chain++)
        chains[chain] = _mm256_set1_ps(OFFSET * (float)chain);
    for (long round = 0; round < ROUNDS; round++)
        for (int chain = 0; chain < CHAINS; chain++)
            chains[chain] = _mm256_fmadd_ps(chains[chain], scale, offset);
    float lanes[8], sum = 0;
    for (int chain = 0; chain < CHAINS; chain++) {
        _mm256_storeu_ps(lanes, chains[chain]);
        for (int lane = 0; lane < 8; lane++)
            sum += lanes[lane];
    }
    return sum;
}

static int has_avx512f(void) { return __builtin_cpu_supports("avx512f"); }
static int has_avx2_and_fma(void) { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
#endif

typedef float portable_vector __attribute__((vector_size(16)));

static float portable_chains(void) {
    portable_vector chains[CHAINS], scale, offset;
    for (int lane = 0; lane < 4; lane++) {
        scale[lane] = SCALE;
        offset[lane] = OFFSET;
    }
    for (int chain = 0; chain < CHAINS; chain++)
        chains[chain] = offset * (float)chain;
    for (long round = 0; round < ROUNDS; round++)
        for (int chain = 0; chain < CHAINS; chain++)
            chains[chain] = chains[chain] * scale + offset;
    float sum = 0;
    for (int chain = 0; chain < CHAINS; chain++)
        for (int lane = 0; lane < 4; lane++)
            sum += chains[chain][lane];
    return sum;
}

static int always(void) { return 1; }

struct instruction_set {
    const char *name; /* what FMA_PEAK_ISA takes and what is printed */
    int (*cpu_has_it)(void);
    chains_of_multiply_accumulates run;
    int lanes; /* float32 lanes per vector */
};

/* Widest first: without FMA_PEAK_ISA, the first one the CPU has is measured. */
static const struct instruction_set INSTRUCTION_SETS[] = {
#ifdef X86
    {"avx512f", has_avx512f, avx512f_chains, 16},
    {"avx2", has_avx2_and_fma, avx2_chains, 8},
#endif
    {"portable", always, portable_chains, 4},
};
#define INSTRUCTION_SET_COUNT (sizeof(INSTRUCTION_SETS) / sizeof(INSTRUCTION_SETS[0]))

static const struct instruction_set *choose(const char *forced) {
    for (unsigned i = 0; i < INSTRUCTION_SET_COUNT; i++) {
        const struct instruction_set *candidate = &INSTRUCTION_SETS[i];
        if (forced != NULL && strcmp(forced, candidate->name) != 0)
            continue;
        if (candidate->cpu_has_it())
            return candidate;
        if (forced != NULL) {
            fprintf(stderr, "FMA_PEAK_ISA=%s: this CPU does not have it\n", forced);
            exit(2);
        }
    }
    fprintf(stderr, "FMA_PEAK_ISA=%s: unknown; one of", forced);
    for (unsigned i = 0; i < INSTRUCTION_SET_COUNT; i++)
        fprintf(stderr, " %s", INSTRUCTION_SETS[i].name);
    fprintf(stderr, "\n");
    exit(2);
}

struct worker {
    pthread_t thread;
    chains_of_multiply_accumulates run;
    float sink;
};

static void *work(void *arg) {
    struct worker *worker = arg;
    worker->sink = worker->run();
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    if (threads < 1 || threads > 256) {
        fprintf(stderr, "usage: [FMA_PEAK_ISA=avx512f|avx2|portable] %s THREADS (1 to 256)\n", argv[0]);
        return 2;
    }
    const char *forced = getenv("FMA_PEAK_ISA");
    const struct instruction_set *isa = choose(forced != NULL && *forced != '\0' ? forced : NULL);
    static struct worker workers[256];
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (int t = 0; t < threads; t++) {
        workers[t].run = isa->run;
        pthread_create(&workers[t].thread, NULL, work, &workers[t]);
    }
    for (int t = 0; t < threads; t++)
        pthread_join(workers[t].thread, NULL);
    clock_gettime(CLOCK_MONOTONIC, &end);
    double seconds = (double)(end.tv_sec - start.tv_sec) + (double)(end.tv_nsec - start.tv_nsec) / 1e9;
    printf("%s %.0f\n", isa->name, (double)threads * ROUNDS * CHAINS * isa->lanes / seconds);
    return 0;
}
