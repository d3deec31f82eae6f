/* Misuse of a deployed model's C interface, run under AddressSanitizer by tests/test_deploy.py.
 *
 * usage: deploy_abuse WEIGHTS BAD_WEIGHTS...
 * Every call below must return its error code with a message and never read or write
 * out of bounds; a good run must still work afterwards. Prints one line per check and
 * "all checks passed"; exits 1 on the first surprise (ASan aborts on a memory error).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "snncc_model.h"

static int failures = 0;

static void expect(int got, int want, const char* what, const snncc_model* m) {
    const char* msg = snncc_model_last_error(m);
    if (got != want || (want != SNNCC_OK && m != NULL && msg[0] == '\0')) {
        printf("FAIL %s: status %d (wanted %d), message '%s'\n", what, got, want, msg);
        failures++;
    } else {
        printf("ok   %s: %d %s\n", what, got, msg);
    }
}

int main(int argc, char** argv) {
    if (argc < 2) return 2;
    snncc_model* m = NULL;
    /* bad weights files: an error code, a message, and a model handle to destroy */
    for (int i = 2; i < argc; ++i) {
        snncc_model* bad = NULL;
        const int rc = snncc_model_create(argv[i], &bad);
        expect(rc, SNNCC_ERROR_WEIGHTS, argv[i], bad);
        snncc_model_destroy(bad);
    }
    expect(snncc_model_create(NULL, &m), SNNCC_ERROR_ARGUMENT, "create(NULL path)", m);
    snncc_model_destroy(m);
    m = NULL;
    expect(snncc_model_create(argv[1], NULL), SNNCC_ERROR_ARGUMENT, "create(NULL out)", NULL);
    snncc_model_destroy(NULL);
    if (snncc_model_last_error(NULL) == NULL) failures++;

    if (snncc_model_create(argv[1], &m) != SNNCC_OK) {
        printf("FAIL create: %s\n", snncc_model_last_error(m));
        return 1;
    }
    const int64_t T = 3, B = 2;
    size_t nx = 0, ny = 0, ns = 0;
    expect(snncc_model_sizes(m, T, B, &nx, &ny, &ns), SNNCC_OK, "sizes", m);
    float* x = calloc(nx, sizeof(float));
    float* y = calloc(ny, sizeof(float));
    float* s = calloc(ns + 1, sizeof(float));
    for (size_t i = 0; i < nx; ++i) x[i] = (float)(i % 7) / 7.0f;

    expect(snncc_model_run(NULL, T, B, x, nx, NULL, 0, NULL, 0, y, ny), SNNCC_ERROR_ARGUMENT, "run(NULL model)", NULL);
    expect(snncc_model_run(m, T, B, NULL, nx, NULL, 0, NULL, 0, y, ny), SNNCC_ERROR_ARGUMENT, "run(NULL x)", m);
    expect(snncc_model_run(m, T, B, x, nx, NULL, 0, NULL, 0, NULL, ny), SNNCC_ERROR_ARGUMENT, "run(NULL y)", m);
    /* a wrong T or B: the counts of the caller's arrays no longer fit */
    expect(snncc_model_run(m, T + 1, B, x, nx, NULL, 0, NULL, 0, y, ny), SNNCC_ERROR_ARGUMENT, "run(T too big)", m);
    expect(snncc_model_run(m, T, B + 1, x, nx, NULL, 0, NULL, 0, y, ny), SNNCC_ERROR_ARGUMENT, "run(B too big)", m);
    expect(snncc_model_run(m, 0, B, x, nx, NULL, 0, NULL, 0, y, ny), SNNCC_ERROR_ARGUMENT, "run(T=0)", m);
    expect(snncc_model_run(m, T, -1, x, nx, NULL, 0, NULL, 0, y, ny), SNNCC_ERROR_ARGUMENT, "run(B=-1)", m);
    expect(snncc_model_run(m, 1, (int64_t)1 << 62, x, nx, NULL, 0, NULL, 0, y, ny),
           SNNCC_ERROR_ARGUMENT, "run(T*B overflows)", m);
    expect(snncc_model_run(m, T, B, x, nx - 1, NULL, 0, NULL, 0, y, ny), SNNCC_ERROR_ARGUMENT, "run(short x)", m);
    expect(snncc_model_run(m, T, B, x, nx, NULL, 0, NULL, 0, y, ny - 1), SNNCC_ERROR_ARGUMENT, "run(short y)", m);
    if (ns > 0) {
        expect(snncc_model_run(m, T, B, x, nx, s, ns - 1, NULL, 0, y, ny), SNNCC_ERROR_ARGUMENT, "run(short state_in)", m);
        expect(snncc_model_run(m, T, B, x, nx, NULL, 0, s, ns + 1, y, ny), SNNCC_ERROR_ARGUMENT, "run(long state_out)", m);
    }
    expect(snncc_model_set_threads(m, -3), SNNCC_ERROR_ARGUMENT, "set_threads(-3)", m);
    int64_t dims[1];
    int rank = 0;
    expect(snncc_model_input_shape(m, dims, 0, &rank), SNNCC_ERROR_ARGUMENT, "input_shape(capacity 0)", m);
    expect(snncc_model_output_shape(m, 99, dims, 1, &rank), SNNCC_ERROR_ARGUMENT, "output_shape(index 99)", m);
    expect(snncc_model_state_entry(m, -1, NULL, NULL, NULL), SNNCC_ERROR_ARGUMENT, "state_entry(-1)", m);
    expect(snncc_model_sizes(m, 0, 1, &nx, NULL, NULL), SNNCC_ERROR_ARGUMENT, "sizes(T=0)", m);

    /* the model still works: a fresh run, then a streamed continuation, in place */
    expect(snncc_model_sizes(m, T, B, &nx, &ny, &ns), SNNCC_OK, "sizes again", m);
    expect(snncc_model_set_threads(m, 2), SNNCC_OK, "set_threads(2)", m);
    expect(snncc_model_run(m, T, B, x, nx, NULL, 0, s, ns, y, ny), SNNCC_OK, "run", m);
    expect(snncc_model_run(m, T, B, x, nx, s, ns, s, ns, y, ny), SNNCC_OK, "run(state in == out)", m);
    expect(snncc_model_reserve(m, 1, 1), SNNCC_OK, "reserve(1, 1)", m);
    expect(snncc_model_run(m, 1, 1, x, nx / (size_t)(T * B), NULL, 0, NULL, 0, y, ny / (size_t)(T * B)),
           SNNCC_OK, "run(T=1, B=1)", m);
    free(x);
    free(y);
    free(s);
    snncc_model_destroy(m);
    if (failures) {
        printf("%d checks failed\n", failures);
        return 1;
    }
    printf("all checks passed\n");
    return 0;
}
