/* The TCG event log (TCG PC Client Platform Firmware Profile, section
 * 10): what firmware measured into which PCR, as the kernel shows it in
 * /sys/kernel/security/tpm0/binary_bios_measurements.  A pure parser for
 * the crypto-agile binary form, for a verifier that replays it to quoted
 * PCR values (docs/ATTESTATION.md).  The log comes from the gateway, so
 * every length is checked against the bytes that remain; nothing is
 * trusted until the replay matches a verified quote.  Internal to libveil;
 * not installed.
 *
 * Layout, all integers little-endian:
 *   TCG_PCR_EVENT (the first event, SHA-1 form): pcrIndex u32, eventType
 *     u32, digest[20], eventSize u32, event[eventSize]; here eventType
 *     EV_NO_ACTION and event a TCG_EfiSpecIDEvent: "Spec ID Event03\0",
 *     platformClass u32, specVersionMinor u8, specVersionMajor u8,
 *     specErrata u8, uintnSize u8, numberOfAlgorithms u32, that many
 *     {algorithmId u16, digestSize u16}, vendorInfoSize u8, vendorInfo;
 *   then TCG_PCR_EVENT2 to the end: pcrIndex u32, eventType u32,
 *     TPML_DIGEST_VALUES (count u32, count x {hashAlg u16, digest of the
 *     size the Spec ID event gives}), eventSize u32, event[eventSize]. */
#ifndef VEIL_EVENTLOG_H
#define VEIL_EVENTLOG_H

#include <stddef.h>
#include <stdint.h>

#include "veil/engine.h"

#pragma GCC visibility push(hidden)

#define VEIL_EVLOG_PCRS 24
#define VEIL_EVLOG_NO_ACTION 0x00000003u /* EV_NO_ACTION: not extended */
#define VEIL_EVLOG_MAX_ALGS 16

/* One event after the Spec ID event. */
typedef struct veil_evlog_event {
    uint32_t pcr;       /* 0 to 23 */
    uint32_t type;      /* eventType (veil_evlog_type_name) */
    uint8_t sha256[32]; /* its SHA-256 digest (every event has one) */
    size_t data_off;    /* the event data, at log + data_off */
    size_t data_len;
} veil_evlog_event;

typedef struct veil_evlog {
    size_t n;             /* events after the Spec ID event */
    veil_evlog_event *ev; /* malloc'd */
    unsigned locality;    /* StartupLocality (0 when none) */
} veil_evlog;

/* Parses len bytes of a crypto-agile log into *out (free it with
 * veil_evlog_free, also after a failure).  VEIL_E_ARG with
 * veil_last_error() naming the event and what is wrong: a SHA-1-only log,
 * no SHA-256 bank, a length past the end, a PCR above 23, a digest of an
 * algorithm the Spec ID event does not list. */
veil_rc veil_evlog_parse(const uint8_t *log, size_t len, veil_evlog *out);
void veil_evlog_free(veil_evlog *l);

/* Replays the SHA-256 bank: PCRs 0 to 16 and 23 start at zero (PCR 0's
 * last byte at the startup locality), 17 to 22 at all ones; each event
 * but EV_NO_ACTION extends its PCR: pcr = SHA-256(pcr || digest).
 * used[i] is set when an event extended PCR i. */
void veil_evlog_replay(const veil_evlog *l, uint8_t pcr[VEIL_EVLOG_PCRS][32],
                       int used[VEIL_EVLOG_PCRS]);

/* "EV_SEPARATOR", "EV_EFI_VARIABLE_DRIVER_CONFIG", ... or NULL for a type
 * this table does not name; veil_evlog_type_parse is its inverse (also
 * takes a decimal or 0x number); 1 on success. */
const char *veil_evlog_type_name(uint32_t type);
int veil_evlog_type_parse(const char *text, uint32_t *type);

#pragma GCC visibility pop

#endif /* VEIL_EVENTLOG_H */
