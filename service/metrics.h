/* service/metrics.h: a small registry of Prometheus metrics (counters,
 * gauges, histograms) and their text exposition format 0.0.4.  Not
 * installed; it knows nothing of the gateway.
 *
 * A family has a name, a help line, a fixed list of label names and, for
 * a histogram, fixed bucket bounds; its series are made on first use, one
 * per list of label values, at most SVC_SERIES_MAX per family (past it an
 * update is dropped and counted: svc_metrics_dropped).  Label values must
 * come from a bounded set (configuration, constants): never a client's
 * text.  Updates take one mutex per family (a short list walk), so
 * families do not wait for each other; rendering takes each family's in
 * turn.  Thread-safe. */
#ifndef VEIL_SVC_METRICS_H
#define VEIL_SVC_METRICS_H

#include <stddef.h>

#pragma GCC visibility push(hidden)

#define SVC_LABELS_MAX 6
#define SVC_BUCKETS_MAX 24
#define SVC_SERIES_MAX 4096

typedef struct svc_metrics svc_metrics;
typedef struct svc_family svc_family;

typedef enum svc_metric_type {
    SVC_COUNTER,
    SVC_GAUGE,
    SVC_HISTOGRAM
} svc_metric_type;

/* NULL: no memory. */
svc_metrics *svc_metrics_new(void);
/* Frees the registry and its families (accepts NULL). */
void svc_metrics_free(svc_metrics *m);

/* A family of m (owned by m, rendered in the order made).  labels: label
 * names, NULL-terminated (at most SVC_LABELS_MAX; may be NULL: none);
 * buckets: a histogram's upper bounds, ascending (+Inf is added).  The
 * strings are borrowed: they must outlive m (constants).  NULL: no
 * memory, or bad arguments. */
svc_family *svc_metrics_family(svc_metrics *m, svc_metric_type type,
                               const char *name, const char *help,
                               const char *const *labels, const double *buckets,
                               size_t n_buckets);

/* Updates the series of the label values (one per label name, in order;
 * NULL counts as ""; copied).  A counter adds v (v >= 0), a gauge is set
 * to v, a histogram observes v.  f NULL: nothing. */
void svc_metric_add(svc_family *f, const char *const *values, double v);
void svc_metric_set(svc_family *f, const char *const *values, double v);
void svc_metric_observe(svc_family *f, const char *const *values, double v);

/* Updates dropped for want of memory or room (SVC_SERIES_MAX). */
unsigned long svc_metrics_dropped(const svc_metrics *m);

/* Every family in the text exposition format (version 0.0.4): malloc'd,
 * NUL-terminated, its length in *len.  NULL: no memory. */
char *svc_metrics_render(svc_metrics *m, size_t *len);

#pragma GCC visibility pop

#endif /* VEIL_SVC_METRICS_H */
