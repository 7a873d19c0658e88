/* The exit codes every veil program shares: veil(1), veil-keys(1) and
 * veild(8) print the same table.  2, 3 and 4 are the ones a retry cannot
 * fix (systemd: RestartPreventExitStatus=2 3 4); a retry of 4 would try
 * a PIN again.  veil adds 10 + its error class (11..21) for what a server
 * answered or a local check refused.  Not installed. */
#ifndef VEIL_EXITCODE_H
#define VEIL_EXITCODE_H

#include <string.h>

#include "veil/engine.h"

enum veil_exit {
    VEIL_EXIT_OK = 0,
    VEIL_EXIT_FAIL = 1,      /* any other failure; a retry may succeed */
    VEIL_EXIT_USAGE = 2,     /* command line or configuration */
    VEIL_EXIT_NOT_FOUND = 3, /* token identity: no such token or key */
    VEIL_EXIT_PIN = 4,       /* PIN wrong, locked, missing or unreadable, or
                                remembered as rejected (veild) */
    VEIL_EXIT_TOKEN = 5,     /* the module cannot be loaded, the token failed */
    VEIL_EXIT_EXISTS = 6     /* veil-keys: the key or files already exist */
};

/* The exit code of an engine failure.  A PIN source that cannot be read
 * (a missing PIN file, one readable by everyone) is VEIL_E_IO from
 * engine/pin.c, whose messages all read "engine: PIN ..." (perhaps after
 * what was being done): that is a PIN failure too. */
static inline int veil_exit_for(const veil_error *e)
{
    switch (e->code) {
    case VEIL_OK:
        return VEIL_EXIT_OK;
    case VEIL_E_ARG:
        return VEIL_EXIT_USAGE;
    case VEIL_E_NOT_FOUND:
    case VEIL_E_AMBIGUOUS:
        return VEIL_EXIT_NOT_FOUND;
    case VEIL_E_PIN:
    case VEIL_E_PIN_LOCKED:
    case VEIL_E_PIN_REQUIRED:
        return VEIL_EXIT_PIN;
    case VEIL_E_MODULE:
    case VEIL_E_TOKEN:
        return VEIL_EXIT_TOKEN;
    case VEIL_E_EXISTS:
        return VEIL_EXIT_EXISTS;
    case VEIL_E_IO:
        return strstr(e->message, "engine: PIN ") ? VEIL_EXIT_PIN
                                                  : VEIL_EXIT_FAIL;
    default:
        return VEIL_EXIT_FAIL;
    }
}

#endif /* VEIL_EXITCODE_H */
