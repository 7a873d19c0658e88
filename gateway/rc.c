/* The outcomes of the gateway's internals (gw_rc, gateway.h) and the one
 * table that maps an outcome to the HTTP status a client is answered with
 * and its default detail.  gw_respond (respond.c) and the tests read it;
 * nothing else names a status for an outcome. */
#include "config.h"

#include "gateway.h"
#include "package.h"

static const struct {
    int status;
    const char *detail; /* when the caller gives none */
} answers[] = {
    [GW_OK] = {200, "ok"},
    [GW_REFUSED] = {400, "bad request"},
    [GW_UNAUTHORIZED] = {401, "invalid API key"},
    [GW_FORBIDDEN] = {403, "forbidden"},
    [GW_NOT_FOUND] = {404, "not found"},
    [GW_REPLAY] = {409, "replays are refused"},
    [GW_RATE_LIMITED] = {429, "rate limit exceeded"},
    [GW_INTERNAL] = {500, "internal error"},
    [GW_UPSTREAM] = {502, "upstream error"},
    [GW_UNAVAILABLE] = {503, "try again later"},
    [GW_NOMEM] = {503, "out of memory"},
    [GW_TIMEOUT] = {504, "inference backend timed out"},
    [GW_UNDECRYPTABLE] = {400, VEIL_PKG_DECRYPT_DETAIL},
    [GW_MEDIA_TYPE] = {415, "unsupported media type"},
    [GW_OHTTP_KEY] = {400, "key configuration problem"},
    [GW_BUSY] = {503, "the TPM is busy; try again later"},
    [GW_METHOD] = {405, "method not allowed"},
};

#define N_ANSWERS (sizeof answers / sizeof answers[0])

int gw_rc_status(gw_rc rc)
{
    return (unsigned)rc < N_ANSWERS && answers[rc].status ? answers[rc].status
                                                          : 500;
}

const char *gw_rc_detail(gw_rc rc)
{
    return (unsigned)rc < N_ANSWERS && answers[rc].detail
               ? answers[rc].detail
               : answers[GW_INTERNAL].detail;
}
