/* events.c — see events.h. Strings in the protobuf structs are borrowed from the JSON
 * document; protobuf-c wants char *, hence str() below (the packer never writes them). */
#include "events.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ac_event.h"
#include "validate.h"

#define MAX_SKILLS  64
#define MAX_REGIONS 64

static const char *const topics[] = {
    [DISPATCH_EV_ENGINEER_CREATED] = "engineer.created",
    [DISPATCH_EV_ENGINEER_UPDATED] = "engineer.updated",
};

const char *dispatch_event_topic(dispatch_event_kind_t kind)
{
    return topics[kind];
}

static char *str(const json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return (char *)(uintptr_t)(s ? s : "");
}

int dispatch_event_pack_engineer(dispatch_event_kind_t kind, const json_t *doc,
                                 const char *correlation_id, const char *const *changed,
                                 size_t n_changed, char event_id_out[AC_UUID_STRLEN],
                                 uint8_t **buf_out, size_t *len_out)
{
    Aftercare__V1__Envelope env;
    ac_event_ids_t ids;
    Aftercare__V1__Engineer e;
    Aftercare__V1__Contact contact;
    Aftercare__V1__EngineerSkill skills[MAX_SKILLS], *skill_ptrs[MAX_SKILLS];
    char *regions[MAX_REGIONS];
    Aftercare__V1__EngineerCreated created;
    Aftercare__V1__EngineerUpdated updated;
    const char *id = json_string_value(json_object_get(doc, "id"));
    const json_t *skills_j = json_object_get(doc, "skills");
    const json_t *regions_j = json_object_get(doc, "regions");
    const json_t *contact_j = json_object_get(doc, "contact");
    char *shift = NULL;
    size_t i;
    const json_t *v;
    int rc;

    *buf_out = NULL;
    *len_out = 0;
    if (!id || json_array_size(skills_j) > MAX_SKILLS || json_array_size(regions_j) > MAX_REGIONS)
        return AC_ERR_INVALID;
    if (!(shift = json_dumps(json_object_get(doc, "shift"), JSON_COMPACT | JSON_ENCODE_ANY)))
        return AC_ERR_NOMEM;

    aftercare__v1__engineer__init(&e);
    aftercare__v1__contact__init(&contact);
    contact.phone = str(contact_j, "phone");
    contact.email = str(contact_j, "email");
    json_array_foreach(skills_j, i, v)
    {
        aftercare__v1__engineer_skill__init(&skills[i]);
        skills[i].kind = str(v, "kind");
        skills[i].name = str(v, "name");
        skills[i].level = (int32_t)json_integer_value(json_object_get(v, "level"));
        skill_ptrs[i] = &skills[i];
    }
    json_array_foreach(regions_j, i, v) regions[i] = (char *)(uintptr_t)json_string_value(v);
    e.id = str(doc, "id");
    e.name = str(doc, "name");
    e.role = (Aftercare__V1__EngineerRole)dispatch_enum_parse(
        dispatch_role_names, AC_ARRAY_LEN(dispatch_role_names),
        json_string_value(json_object_get(doc, "role")));
    e.n_skills = json_array_size(skills_j);
    e.skills = skill_ptrs;
    e.n_regions = json_array_size(regions_j);
    e.regions = regions;
    e.capacity = (int32_t)json_integer_value(json_object_get(doc, "capacity"));
    e.availability = (Aftercare__V1__EngineerAvailability)dispatch_enum_parse(
        dispatch_availability_names, AC_ARRAY_LEN(dispatch_availability_names),
        json_string_value(json_object_get(doc, "availability")));
    e.contact = &contact;
    e.shift_json = shift;
    e.version = (int64_t)json_integer_value(json_object_get(doc, "version"));
    e.created_at = str(doc, "created_at");
    e.updated_at = str(doc, "updated_at");

    ac_event_init(&env, &ids, "dispatch", topics[kind], id, id, e.version, correlation_id);
    if (kind == DISPATCH_EV_ENGINEER_CREATED) {
        aftercare__v1__engineer_created__init(&created);
        created.engineer = &e;
        env.payload_case = AFTERCARE__V1__ENVELOPE__PAYLOAD_ENGINEER_CREATED;
        env.engineer_created = &created;
    } else {
        aftercare__v1__engineer_updated__init(&updated);
        updated.engineer = &e;
        updated.n_changed_fields = n_changed;
        updated.changed_fields = (char **)(uintptr_t)changed;
        env.payload_case = AFTERCARE__V1__ENVELOPE__PAYLOAD_ENGINEER_UPDATED;
        env.engineer_updated = &updated;
    }
    rc = ac_event_pack(&env, buf_out, len_out);
    free(shift);
    if (rc < 0)
        return rc;
    memcpy(event_id_out, ids.id, AC_UUID_STRLEN);
    return 0;
}
