/* libFuzzer target: whatever arrives on the bus as an envelope frame must decode or be
 * refused cleanly, and a decoded envelope must survive the JSON rendering, the topic
 * check and the relay's sequence append.
 *   cmake -S . -B build/fuzz -DCMAKE_C_COMPILER=clang -DAC_FUZZ=ON
 *   cmake --build build/fuzz --target fuzz_envelope && build/fuzz/tests/fuzz/fuzz_envelope
 * -max_total_time=60 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>

#include "ac_event.h"
#include "ac_pbjson.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Aftercare__V1__Envelope *env = aftercare__v1__envelope__unpack(NULL, size, data);
    if (env) {
        char topic[AC_TOPIC_MAX];
        json_t *j = ac_pbjson_from_message(&env->base);
        char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
        free(text);
        json_decref(j);
        (void)ac_event_topic_from_type(env->type, topic, sizeof(topic));
        (void)ac_event_payload(env);
        aftercare__v1__envelope__free_unpacked(env, NULL);
    }
    uint8_t *out = malloc(size + 11);
    if (out) {
        size_t n = ac_event_append_sequence(data, size, size, out);
        Aftercare__V1__Envelope *again = aftercare__v1__envelope__unpack(NULL, n, out);
        if (env && !again)
            abort(); /* appending a valid field to a valid message must stay valid */
        if (again)
            aftercare__v1__envelope__free_unpacked(again, NULL);
        free(out);
    }
    return 0;
}
