/* The CPU's peak rate of float32 multiply-accumulates: the ceiling any inference runtime works under.

Each thread runs independent chains of fused multiply-adds on the widest vectors the compiler targets
(-march=native), enough chains to hide the instruction's latency. Prints multiply-accumulates per second.
Build and run: gcc -O3 -march=native -pthread bench/fma_peak.c -o fma_peak && ./fma_peak THREADS */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CHAINS 12
#define ROUNDS 100000000L

typedef float vector __attribute__((vector_size(64)));
#define LANES (sizeof(vector) / sizeof(float))

static void *multiply_accumulate(void *sink) {
    vector chains[CHAINS], scale, offset;
    for (unsigned lane = 0; lane < LANES; lane++) {
        scale[lane] = 1.0000001f;
        offset[lane] = 1e-9f;
    }
    for (int chain = 0; chain < CHAINS; chain++)
        chains[chain] = offset * (float)chain;
    for (long round = 0; round < ROUNDS; round++)
        for (int chain = 0; chain < CHAINS; chain++)
            chains[chain] = chains[chain] * scale + offset;
    float sum = 0; /* used, so that the compiler keeps the loop */
    for (int chain = 0; chain < CHAINS; chain++)
        for (unsigned lane = 0; lane < LANES; lane++)
            sum += chains[chain][lane];
    *(float *)sink = sum;
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    if (threads < 1 || threads > 256) {
        fprintf(stderr, "usage: %s THREADS (1 to 256)\n", argv[0]);
        return 2;
    }
    pthread_t workers[256];
    float sinks[256];
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (int t = 0; t < threads; t++)
        pthread_create(&workers[t], NULL, multiply_accumulate, &sinks[t]);
    for (int t = 0; t < threads; t++)
        pthread_join(workers[t], NULL);
    clock_gettime(CLOCK_MONOTONIC, &end);
    double seconds = (double)(end.tv_sec - start.tv_sec) + (double)(end.tv_nsec - start.tv_nsec) / 1e9;
    printf("%.0f\n", (double)threads * ROUNDS * CHAINS * LANES / seconds);
    return 0;
}
