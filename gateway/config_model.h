/* gateway/config_model.h: the models of veild's configuration
 * (config_model.c), for config.c's table and checks. */
#ifndef VEIL_GW_CONFIG_MODEL_H
#define VEIL_GW_CONFIG_MODEL_H

#include <stddef.h>

#include "gateway.h"
#include "settings.h"

/* The [model ID] section of the table. */
extern const svc_section gw_model_section;

/* "ID=UPSTREAM[,tiers=...][,key-file=FILE][,cache-salt=FIELD]" appended to
 * cfg's models.  0, or -1 with msg. */
int gw_model_from_spec(gw_config *cfg, const char *spec, char *msg,
                       size_t msize);
/* Frees what a model holds. */
void gw_model_clear(gw_model *m);
/* At least one model, each complete, no ID twice.  0, or -1 with err. */
int gw_config_check_models(const gw_config *cfg, char *err, size_t err_size);

#endif /* VEIL_GW_CONFIG_MODEL_H */
