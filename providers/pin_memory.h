/* PINs a token rejected, remembered on disk across runs (the engine's
 * pin_memory_dir, veil/engine.h): a PIN a token refused once is never
 * sent to it again, so restarts (systemd) cannot lock the token.  Keyed
 * by token serial; the PIN only as HMAC-SHA256 under a random per-host
 * key (pin-memory.key), so the files do not let anyone test guesses
 * without that key.  Internal to the PKCS#11 provider. */
#ifndef VEIL_PIN_MEMORY_H
#define VEIL_PIN_MEMORY_H

#include <stddef.h>

#include "veil/engine.h"

/* 1 when the token `serial` rejected this PIN before (file: the path of
 * the record), 0 when not (or nothing can be read: then nothing is
 * known). */
int pinmem_rejected_before(const char *dir, const char *serial,
                           const veil_secbuf *pin, char *file, size_t size);

/* Remembers that the token `serial` rejected this PIN (replacing any
 * earlier record).  0, or -1 (why: a line for the log). */
int pinmem_remember(const char *dir, const char *serial, const veil_secbuf *pin,
                    char *why, size_t size);

/* The token accepted a PIN: its record, if any, is removed. */
void pinmem_forget(const char *dir, const char *serial);

#endif /* VEIL_PIN_MEMORY_H */
