/* veild configuration: the models (config_model.h), from
 * "model = ID=UPSTREAM[,tiers=...][,key-file=FILE][,cache-salt=FIELD]" and
 * from [model ID] sections (docs/veild.conf.example); config.c holds the
 * other settings and the table that names this file's section. */
#include "config.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "config_model.h"
#include "gateway.h"
#include "settings.h"
#include "tier.h"

#define MODEL_ID_MAX 200

/* ---- models -------------------------------------------------------------- */

static int model_id_ok(const char *id, size_t len)
{
    if (len == 0 || len > MODEL_ID_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = id[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || strchr("._-:/@+", c)))
            return 0;
    }
    return 1;
}

void gw_model_clear(gw_model *m)
{
    free(m->id);
    free(m->upstream);
    free(m->upstream_key_file);
    free(m->cache_salt_field);
    memset(m, 0, sizeof *m);
}

/* The name of a request field for the prompt cache's salt: 1 to 64 of
 * A-Z a-z 0-9 _ . - (it goes into JSON unescaped). */
static int set_salt_field(gw_model *m, const char *v, size_t len, char *msg,
                          size_t msize)
{
    int ok = len >= 1 && len <= 64;

    for (size_t i = 0; ok && i < len; i++)
        ok = (v[i] >= 'a' && v[i] <= 'z') || (v[i] >= 'A' && v[i] <= 'Z') ||
             (v[i] >= '0' && v[i] <= '9') || v[i] == '_' || v[i] == '.' ||
             v[i] == '-';
    if (!ok) {
        svc_put_err(msg, msize,
                    "cache_salt_field: 1 to 64 of A-Z a-z 0-9 _ . - "
                    "(such as cache_salt)");
        return -1;
    }
    return svc_set_str(&m->cache_salt_field, v, len, msg, msize);
}

static int model_check_id(const gw_config *cfg, const char *id, size_t len,
                          char *msg, size_t msize)
{
    char b[64];

    if (!model_id_ok(id, len)) {
        svc_put_err(
            msg, msize,
            "'%s' is not a model ID (letters, digits and . _ - : / @ +; "
            "at most %d)",
            svc_shown(id, len, b, sizeof b), MODEL_ID_MAX);
        return -1;
    }
    for (size_t i = 0; i < cfg->n_models; i++)
        if (cfg->models[i].id && strlen(cfg->models[i].id) == len &&
            memcmp(cfg->models[i].id, id, len) == 0) {
            svc_put_err(msg, msize, "model '%.*s' is configured twice",
                        (int)len, id);
            return -1;
        }
    if (cfg->n_models >= GW_MAX_MODELS) {
        svc_put_err(msg, msize, "too many models (at most %d)", GW_MAX_MODELS);
        return -1;
    }
    return 0;
}

/* "echo", unix:/PATH (a Unix socket: the server's base path is /v1), or
 * http:// or https:// with a host; trailing '/' dropped. */
static int model_set_upstream(gw_model *m, const char *v, size_t len, char *msg,
                              size_t msize)
{
    size_t skip = 0;
    char b[64];

    if (len == 4 && memcmp(v, "echo", 4) == 0)
        return svc_set_str(&m->upstream, v, len, msg, msize);
    if (len >= 5 && memcmp(v, "unix:", 5) == 0) {
        int ok =
            len > 6 && v[5] == '/' && len - 5 <= VEIL_BACKEND_UNIX_PATH_MAX;

        for (size_t i = 5; ok && i < len; i++)
            ok = (unsigned char)v[i] > 0x20 && (unsigned char)v[i] < 0x7f;
        if (ok)
            return svc_set_str(&m->upstream, v, len, msg, msize);
        svc_put_err(msg, msize,
                    "'%s' is not a Unix socket upstream (unix: and an "
                    "absolute path of at most %d characters, no spaces, "
                    "such as unix:/run/llama.sock)",
                    svc_shown(v, len, b, sizeof b), VEIL_BACKEND_UNIX_PATH_MAX);
        return -1;
    }
    if (len > 7 && strncmp(v, "http://", 7) == 0)
        skip = 7;
    else if (len > 8 && strncmp(v, "https://", 8) == 0)
        skip = 8;
    for (size_t i = 0; skip && i < len; i++)
        if ((unsigned char)v[i] <= 0x20 || (unsigned char)v[i] >= 0x7f)
            skip = 0;
    if (skip && v[skip] != '/') {
        while (len > skip && v[len - 1] == '/')
            len--;
        return svc_set_str(&m->upstream, v, len, msg, msize);
    }
    svc_put_err(msg, msize,
                "'%s' is not an upstream (echo, unix:/PATH, or an http:// or "
                "https:// base URL such as http://127.0.0.1:8080/v1)",
                svc_shown(v, len, b, sizeof b));
    return -1;
}

/* One tier name of v[0..len), as its bit; 0: not a tier. */
static unsigned tier_bit(const char *v, size_t len)
{
    char name[16];

    if (len >= sizeof name)
        return 0;
    memcpy(name, v, len);
    name[len] = '\0';
    return veil_tier_parse(name);
}

/* Tier names separated by ',' or '+' (spaces allowed around them). */
static int parse_tiers(const char *v, size_t len, unsigned *out, char *msg,
                       size_t msize)
{
    unsigned tiers = 0;
    size_t i = 0;
    char b[64];

    while (i <= len) {
        size_t start, end;
        unsigned bit;

        while (i < len && svc_is_space(v[i]))
            i++;
        start = i;
        while (i < len && v[i] != ',' && v[i] != '+')
            i++;
        end = i;
        while (end > start && svc_is_space(v[end - 1]))
            end--;
        if ((bit = tier_bit(v + start, end - start)) == 0) {
            if (end == start)
                svc_put_err(msg, msize,
                            "'%s' is not a list of tiers (standard, high, "
                            "maximum)",
                            svc_shown(v, len, b, sizeof b));
            else
                svc_put_err(msg, msize,
                            "'%s' is not a tier (standard, high, maximum)",
                            svc_shown(v + start, end - start, b, sizeof b));
            return -1;
        }
        tiers |= bit;
        i++; /* past the separator, or past the end */
    }
    *out = tiers;
    return 0;
}

/* "ID=UPSTREAM[,tiers=a+b][,key-file=FILE]" */
int gw_model_from_spec(gw_config *cfg, const char *spec, char *msg,
                       size_t msize)
{
    const char *eq = strchr(spec, '='), *p, *comma;
    gw_model m;

    memset(&m, 0, sizeof m);
    m.tiers = VEIL_TIER_ALL;
    if (!eq) {
        svc_put_err(msg, msize,
                    "expected ID=UPSTREAM[,tiers=A+B][,key-file=FILE]");
        return -1;
    }
    if (model_check_id(cfg, spec, (size_t)(eq - spec), msg, msize) != 0)
        return -1;
    if (svc_set_str(&m.id, spec, (size_t)(eq - spec), msg, msize) != 0)
        return -1;
    p = eq + 1;
    comma = strchr(p, ',');
    if (model_set_upstream(&m, p, comma ? (size_t)(comma - p) : strlen(p), msg,
                           msize) != 0)
        goto fail;
    while (comma) {
        size_t len;
        const char *val;

        p = comma + 1;
        comma = strchr(p, ',');
        len = comma ? (size_t)(comma - p) : strlen(p);
        if (len > 6 && strncmp(p, "tiers=", 6) == 0) {
            if (parse_tiers(p + 6, len - 6, &m.tiers, msg, msize) != 0)
                goto fail;
        } else if (len > 9 && (strncmp(p, "key-file=", 9) == 0 ||
                               strncmp(p, "key_file=", 9) == 0)) {
            val = p + 9;
            if (svc_set_str(&m.upstream_key_file, val, len - 9, msg, msize) !=
                0)
                goto fail;
        } else if (len > 11 && (strncmp(p, "cache-salt=", 11) == 0 ||
                                strncmp(p, "cache_salt=", 11) == 0)) {
            if (set_salt_field(&m, p + 11, len - 11, msg, msize) != 0)
                goto fail;
        } else {
            char b[64];

            svc_put_err(msg, msize,
                        "unknown model option '%s' (tiers=A+B, key-file=FILE, "
                        "cache-salt=FIELD)",
                        svc_shown(p, len, b, sizeof b));
            goto fail;
        }
    }
    cfg->models[cfg->n_models++] = m;
    return 0;
fail:
    gw_model_clear(&m);
    return -1;
}

/* ---- the [model ID] section ---------------------------------------------- */

/* The model being read is models[n_models], which joins the others when
 * its section closes. */
static gw_model *pending(gw_config *cfg)
{
    return cfg->n_models < GW_MAX_MODELS ? &cfg->models[cfg->n_models] : NULL;
}

static int section_open(void *base, const char *id, char *msg, size_t msize)
{
    gw_config *cfg = base;
    gw_model *m;

    if (model_check_id(cfg, id, strlen(id), msg, msize) != 0)
        return -1;
    m = pending(cfg);
    memset(m, 0, sizeof *m);
    m->tiers = VEIL_TIER_ALL;
    if (svc_set_str(&m->id, id, strlen(id), msg, msize) != 0)
        return -1;
    return 0;
}

static int section_set(void *base, const char *key, const char *v, char *msg,
                       size_t msize)
{
    gw_model *m = pending(base);

    if (strcmp(key, "upstream") == 0)
        return model_set_upstream(m, v, strlen(v), msg, msize);
    if (strcmp(key, "upstream_key_file") == 0)
        return svc_set_str(&m->upstream_key_file, v, strlen(v), msg, msize);
    if (strcmp(key, "cache_salt_field") == 0)
        return set_salt_field(m, v, strlen(v), msg, msize);
    return parse_tiers(v, strlen(v), &m->tiers, msg, msize);
}

/* It needs an upstream; then it joins the models. */
static int section_close(void *base, char *msg, size_t msize)
{
    gw_config *cfg = base;
    gw_model *m = pending(cfg);

    if (!m->upstream) {
        svc_put_err(msg, msize, "[model %s] has no upstream", m->id);
        return -1;
    }
    cfg->n_models++;
    return 0;
}

static void section_discard(void *base)
{
    gw_model *m = pending(base);

    if (m)
        gw_model_clear(m);
}

/* The lines of a [model ID] section. */
static const svc_key section_keys[] = {
    {"upstream", "URL|unix:PATH|echo",
     "base URL of an OpenAI-compatible server (.../v1), unix:/PATH (its Unix "
     "socket, base path /v1), or echo; required"},
    {"upstream_key_file", "FILE",
     "file holding the upstream's API key (sent as a Bearer token)"},
    {"tiers", "standard,high,maximum",
     "security tiers this model serves (default: all three)"},
    {"cache_salt_field", "FIELD",
     "request field by which the backend keeps prompt caches apart (vLLM: "
     "cache_salt); veild sets it per API key.  Unset: one shared cache"},
};
/* clang-format on */

const svc_section gw_model_section = {
    "model",       "or use model = ID=UPSTREAM",
    section_keys,  sizeof section_keys / sizeof section_keys[0],
    section_open,  section_set,
    section_close, section_discard,
};

/* At least one model, each complete, no ID twice. */
int gw_config_check_models(const gw_config *cfg, char *err, size_t err_size)
{
    if (cfg->n_models == 0) {
        svc_put_err(err, err_size,
                    "no model configured (model = ID=UPSTREAM, or a [model ID] "
                    "section)");
        return -1;
    }
    if (cfg->n_models > GW_MAX_MODELS) {
        svc_put_err(err, err_size, "too many models (at most %d)",
                    GW_MAX_MODELS);
        return -1;
    }
    for (size_t i = 0; i < cfg->n_models; i++) {
        const gw_model *m = &cfg->models[i];

        if (!m->id || !m->upstream || !(m->tiers & VEIL_TIER_ALL)) {
            svc_put_err(err, err_size,
                        "model %zu lacks an ID, an upstream or a tier", i + 1);
            return -1;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(cfg->models[j].id, m->id) == 0) {
                svc_put_err(err, err_size, "model '%s' is configured twice",
                            m->id);
                return -1;
            }
    }
    return 0;
}
