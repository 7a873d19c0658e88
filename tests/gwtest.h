/* What test_gateway, test_gateway_v2 and test_gateway_conn share: veild and
 * tests/mock-upstream started as processes (tests/harness.h), and raw
 * HTTP/1.1 over a plain socket (a request out, one answer in), for the
 * cases a well-behaved client library cannot produce. */
#ifndef VEIL_TEST_GWTEST_H
#define VEIL_TEST_GWTEST_H

#include <stddef.h>

#include "harness.h"

/* tu_proc_stop_ok() as a CUnit assertion. */
void gt_stop_ok(tu_proc *p);

/* tests/mock-upstream ($VEIL_BUILDDIR) with its port file and a fresh log
 * in $VEIL_TEST_DIR.  0, or -1 (printed). */
int gt_mock_start(tu_proc *p, const char *name);

/* veild ($VEIL_BUILDDIR) --port 0 --port-file $VEIL_TEST_DIR/NAME.port,
 * then the flags of base and of extra (NULL-terminated lists; later flags
 * override earlier ones).  flags: tu_proc_start()'s.  0, or -1. */
int gt_veild_start(tu_proc *p, const char *name, const char *const *base,
                   const char *const *extra, unsigned flags);

typedef struct gt_answer {
    int status; /* 0: none (closed, reset or nothing in time) */
    int whole;  /* the body came up to its Content-Length */
    char head[2048];
    char *body; /* NUL-terminated */
    size_t len;
} gt_answer;

/* Reads one answer: the head, then the body up to its Content-Length (or
 * until the connection ends).  gt_answer_free() it. */
void gt_read_answer(int fd, gt_answer *a);
void gt_answer_free(gt_answer *a);

/* A header's value in a's head, or "" (into out). */
const char *gt_head_value(const gt_answer *a, const char *name, char *out,
                          size_t size);

/* The mock's request count (GET /mock/stats), or -1. */
double gt_mock_requests(const tu_proc *mock);

#endif /* VEIL_TEST_GWTEST_H */
