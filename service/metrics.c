/* service/metrics.c: the registry of service/metrics.h.  A family holds
 * its series in a list (in the order made), each with its label values,
 * its value (counter, gauge) or its bucket counts, sum and count
 * (histogram), under the family's mutex.  The list is short (label values
 * come from configuration), and a hash of the values is compared before
 * the strings. */
#include "config.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

typedef struct series {
    struct series *next;
    unsigned long hash;
    char *values[SVC_LABELS_MAX];
    double value, sum; /* value: counter, gauge; sum: histogram */
    unsigned long long count;
    unsigned long long bucket[SVC_BUCKETS_MAX]; /* not cumulative */
} series;

struct svc_family {
    struct svc_family *next;
    svc_metrics *m;
    svc_metric_type type;
    const char *name, *help;
    const char *labels[SVC_LABELS_MAX];
    size_t n_labels;
    double bound[SVC_BUCKETS_MAX];
    size_t n_buckets;
    pthread_mutex_t lock;
    series *head, *tail;
    size_t n_series;
};

struct svc_metrics {
    pthread_mutex_t lock; /* the list of families */
    svc_family *head, *tail;
    atomic_ulong dropped;
};

svc_metrics *svc_metrics_new(void)
{
    svc_metrics *m = calloc(1, sizeof *m);

    if (m) {
        pthread_mutex_init(&m->lock, NULL);
        atomic_init(&m->dropped, 0);
    }
    return m;
}

static void series_free(series *s, size_t n_labels)
{
    for (size_t i = 0; i < n_labels; i++)
        free(s->values[i]);
    free(s);
}

void svc_metrics_free(svc_metrics *m)
{
    if (m == NULL)
        return;
    for (svc_family *f = m->head, *fn; f; f = fn) {
        fn = f->next;
        for (series *s = f->head, *sn; s; s = sn) {
            sn = s->next;
            series_free(s, f->n_labels);
        }
        pthread_mutex_destroy(&f->lock);
        free(f);
    }
    pthread_mutex_destroy(&m->lock);
    free(m);
}

svc_family *svc_metrics_family(svc_metrics *m, svc_metric_type type,
                               const char *name, const char *help,
                               const char *const *labels, const double *buckets,
                               size_t n_buckets)
{
    svc_family *f;
    size_t n = 0;

    if (m == NULL || name == NULL || help == NULL ||
        (type == SVC_HISTOGRAM &&
         (buckets == NULL || n_buckets == 0 || n_buckets > SVC_BUCKETS_MAX)))
        return NULL;
    while (labels && labels[n])
        if (++n > SVC_LABELS_MAX)
            return NULL;
    for (size_t i = 1; type == SVC_HISTOGRAM && i < n_buckets; i++)
        if (!(buckets[i] > buckets[i - 1]))
            return NULL;
    if ((f = calloc(1, sizeof *f)) == NULL)
        return NULL;
    f->m = m;
    f->type = type;
    f->name = name;
    f->help = help;
    f->n_labels = n;
    for (size_t i = 0; i < n; i++)
        f->labels[i] = labels[i];
    if (type == SVC_HISTOGRAM) {
        memcpy(f->bound, buckets, n_buckets * sizeof *buckets);
        f->n_buckets = n_buckets;
    }
    pthread_mutex_init(&f->lock, NULL);
    pthread_mutex_lock(&m->lock);
    if (m->tail)
        m->tail->next = f;
    else
        m->head = f;
    m->tail = f;
    pthread_mutex_unlock(&m->lock);
    return f;
}

static unsigned long values_hash(const svc_family *f, const char *const *values)
{
    unsigned long h = 14695981039346656037ul; /* FNV-1a */

    for (size_t i = 0; i < f->n_labels; i++) {
        const char *v = values && values[i] ? values[i] : "";
        for (; *v; v++)
            h = (h ^ (unsigned char)*v) * 1099511628211ul;
        h = (h ^ 0xffu) * 1099511628211ul; /* a separator no value has */
    }
    return h;
}

static int values_equal(const svc_family *f, const series *s,
                        const char *const *values)
{
    for (size_t i = 0; i < f->n_labels; i++)
        if (strcmp(s->values[i], values && values[i] ? values[i] : "") != 0)
            return 0;
    return 1;
}

/* The series of values, made when missing (f->lock held); NULL when there
 * is no room or memory (counted as dropped). */
static series *series_of(svc_family *f, const char *const *values)
{
    unsigned long h = values_hash(f, values);
    series *s;

    for (s = f->head; s; s = s->next)
        if (s->hash == h && values_equal(f, s, values))
            return s;
    if (f->n_series >= SVC_SERIES_MAX || (s = calloc(1, sizeof *s)) == NULL)
        goto drop;
    s->hash = h;
    for (size_t i = 0; i < f->n_labels; i++)
        if ((s->values[i] = strdup(values && values[i] ? values[i] : "")) ==
            NULL) {
            series_free(s, i);
            goto drop;
        }
    if (f->tail)
        f->tail->next = s;
    else
        f->head = s;
    f->tail = s;
    f->n_series++;
    return s;
drop:
    atomic_fetch_add(&f->m->dropped, 1);
    return NULL;
}

static void update(svc_family *f, svc_metric_type type,
                   const char *const *values, double v)
{
    series *s;

    if (f == NULL || f->type != type || isnan(v))
        return;
    pthread_mutex_lock(&f->lock);
    if ((s = series_of(f, values)) != NULL) {
        switch (type) {
        case SVC_COUNTER:
            if (v > 0)
                s->value += v;
            break;
        case SVC_GAUGE:
            s->value = v;
            break;
        case SVC_HISTOGRAM: {
            size_t b = 0;
            while (b < f->n_buckets && v > f->bound[b])
                b++;
            if (b < f->n_buckets)
                s->bucket[b]++;
            s->sum += v;
            s->count++;
            break;
        }
        }
    }
    pthread_mutex_unlock(&f->lock);
}

void svc_metric_add(svc_family *f, const char *const *values, double v)
{
    update(f, SVC_COUNTER, values, v);
}

void svc_metric_set(svc_family *f, const char *const *values, double v)
{
    update(f, SVC_GAUGE, values, v);
}

void svc_metric_observe(svc_family *f, const char *const *values, double v)
{
    update(f, SVC_HISTOGRAM, values, v);
}

unsigned long svc_metrics_dropped(const svc_metrics *m)
{
    return m ? atomic_load(&((svc_metrics *)m)->dropped) : 0;
}

/* ---- the text format ---------------------------------------------------- */

typedef struct out {
    char *p;
    size_t len, cap;
    int failed;
} out;

static void put(out *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void put(out *o, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (o->failed)
        return;
    for (;;) {
        va_start(ap, fmt);
        n = vsnprintf(o->p + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->failed = 1;
            return;
        }
        if ((size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        size_t cap = o->cap * 2 + (size_t)n;
        char *p = realloc(o->p, cap);
        if (p == NULL) {
            o->failed = 1;
            return;
        }
        o->p = p;
        o->cap = cap;
    }
}

/* A number as the format writes it: integers without a fraction. */
static void put_num(out *o, double v)
{
    if (isinf(v))
        put(o, "%s", v > 0 ? "+Inf" : "-Inf");
    else if (v == floor(v) && fabs(v) < 1e15)
        put(o, "%.0f", v);
    else
        put(o, "%.9g", v);
}

/* A label value escaped: backslash, double quote and line feed. */
static void put_value(out *o, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            put(o, "\\%c", *v);
        else if (*v == '\n')
            put(o, "\\n");
        else
            put(o, "%c", *v);
    }
}

/* {a="x",b="y"[,le="B"]}: nothing when there are no labels and no le. */
static void put_labels(out *o, const svc_family *f, const series *s,
                       const char *le)
{
    if (f->n_labels == 0 && le == NULL)
        return;
    put(o, "{");
    for (size_t i = 0; i < f->n_labels; i++) {
        put(o, "%s%s=\"", i ? "," : "", f->labels[i]);
        put_value(o, s->values[i]);
        put(o, "\"");
    }
    if (le)
        put(o, "%sle=\"%s\"", f->n_labels ? "," : "", le);
    put(o, "}");
}

static void put_series(out *o, const svc_family *f, const series *s)
{
    if (f->type != SVC_HISTOGRAM) {
        put(o, "%s", f->name);
        put_labels(o, f, s, NULL);
        put(o, " ");
        put_num(o, s->value);
        put(o, "\n");
        return;
    }
    unsigned long long cum = 0;
    char le[32];
    for (size_t b = 0; b <= f->n_buckets; b++) {
        if (b < f->n_buckets) {
            cum += s->bucket[b];
            snprintf(le, sizeof le, "%.9g", f->bound[b]);
        } else {
            cum = s->count;
            snprintf(le, sizeof le, "+Inf");
        }
        put(o, "%s_bucket", f->name);
        put_labels(o, f, s, le);
        put(o, " %llu\n", cum);
    }
    put(o, "%s_sum", f->name);
    put_labels(o, f, s, NULL);
    put(o, " ");
    put_num(o, s->sum);
    put(o, "\n%s_count", f->name);
    put_labels(o, f, s, NULL);
    put(o, " %llu\n", s->count);
}

char *svc_metrics_render(svc_metrics *m, size_t *len)
{
    static const char *const types[] = {
        [SVC_COUNTER] = "counter",
        [SVC_GAUGE] = "gauge",
        [SVC_HISTOGRAM] = "histogram",
    };
    out o = {.p = malloc(4096), .cap = 4096};

    if (o.p == NULL)
        return NULL;
    o.p[0] = '\0';
    pthread_mutex_lock(&m->lock);
    for (svc_family *f = m->head; f; f = f->next) {
        put(&o, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name,
            types[f->type]);
        pthread_mutex_lock(&f->lock);
        for (const series *s = f->head; s; s = s->next)
            put_series(&o, f, s);
        pthread_mutex_unlock(&f->lock);
    }
    pthread_mutex_unlock(&m->lock);
    if (o.failed) {
        free(o.p);
        return NULL;
    }
    *len = o.len;
    return o.p;
}
