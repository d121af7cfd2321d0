/*
 * A sloppy PKCS#11 token for the end-to-end tests: a module that wraps a real one (SoftHSM2)
 * and hands out its function list with a few entries replaced, so that the agent meets what
 * tokens in the field do (tests/src/pkcs11_shim.rs builds it with the system cc and
 * tests/tests/e2e/pkcs11_shim.rs uses it).
 *
 * The wrapped module is DPOP_SHIM_MODULE, default SoftHSM2's. Each fault is chosen by an
 * environment variable, read when the function list is first asked for:
 *
 *   DPOP_SHIM_BAD_UTCTIME=1     C_GetTokenInfo answers with utcTime "    12:34:56    " (spaces
 *                               and hh:mm:ss, as an older soft token writes, instead of
 *                               YYYYMMDDhhmmss00) and CKF_CLOCK_ON_TOKEN set, which is what
 *                               makes the field count; label, serial and the other flags stay.
 *   DPOP_SHIM_TOKEN_INFO_RV=N   C_GetTokenInfo fails with return value N (0x30:
 *                               CKR_DEVICE_ERROR): a slot that cannot be read at all.
 *   DPOP_SHIM_RAW_ONLY=1        the combined hash-and-sign mechanisms (CKM_SHA256_RSA_PKCS,
 *                               CKM_SHA256_RSA_PKCS_PSS, CKM_ECDSA_SHA256, ...) are hidden from
 *                               C_GetMechanismList and C_GetMechanismInfo and refused by
 *                               C_SignInit (CKR_MECHANISM_INVALID): only CKM_RSA_PKCS,
 *                               CKM_RSA_PKCS_PSS, CKM_ECDSA (and CKM_EDDSA) sign.
 *   DPOP_SHIM_FIXED_USAGE=1     the token fixes what a private key may do: C_GenerateKeyPair
 *                               and C_CreateObject answer CKR_ATTRIBUTE_VALUE_INVALID to a
 *                               private key template that sets CKA_DECRYPT, CKA_UNWRAP or
 *                               CKA_DERIVE to false (and create nothing), so only a template
 *                               that leaves them out is taken, and the key gets SoftHSM2's
 *                               defaults for them.
 *
 * Everything else goes straight to the wrapped module.
 */

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST real; /* the wrapped module's list, copied */
static CK_FUNCTION_LIST shim; /* what we hand out */
static CK_RV load_rv = CKR_GENERAL_ERROR;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static int bad_utc_time;
static CK_RV token_info_rv; /* CKR_OK: no fault */
static int raw_only;
static int fixed_usage;

static int flag(const char *name)
{
    const char *value = getenv(name);
    return value != NULL && *value != '\0' && strcmp(value, "0") != 0;
}

/* Hash-and-sign in one mechanism: what a token that signs only hashes lacks. */
static int combined(CK_MECHANISM_TYPE m)
{
    switch (m) {
    case CKM_MD5_RSA_PKCS:
    case CKM_SHA1_RSA_PKCS:
    case CKM_SHA224_RSA_PKCS:
    case CKM_SHA256_RSA_PKCS:
    case CKM_SHA384_RSA_PKCS:
    case CKM_SHA512_RSA_PKCS:
    case CKM_SHA1_RSA_PKCS_PSS:
    case CKM_SHA224_RSA_PKCS_PSS:
    case CKM_SHA256_RSA_PKCS_PSS:
    case CKM_SHA384_RSA_PKCS_PSS:
    case CKM_SHA512_RSA_PKCS_PSS:
    case CKM_ECDSA_SHA1:
    case CKM_ECDSA_SHA224:
    case CKM_ECDSA_SHA256:
    case CKM_ECDSA_SHA384:
    case CKM_ECDSA_SHA512:
        return 1;
    default:
        return 0;
    }
}

static CK_RV shim_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info)
{
    if (token_info_rv != CKR_OK)
        return token_info_rv;
    CK_RV rv = real.C_GetTokenInfo(slot, info);
    if (rv == CKR_OK && bad_utc_time && info != NULL) {
        memcpy(info->utcTime, "    12:34:56    ", sizeof info->utcTime);
        info->flags |= CKF_CLOCK_ON_TOKEN;
    }
    return rv;
}

/* The wrapped module's list without the combined mechanisms, with the usual two-call
   protocol (NULL: how many; too small a buffer: CKR_BUFFER_TOO_SMALL and how many). */
static CK_RV shim_GetMechanismList(CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list,
                                   CK_ULONG_PTR count)
{
    if (count == NULL)
        return CKR_ARGUMENTS_BAD;
    CK_ULONG n = 0;
    CK_RV rv = real.C_GetMechanismList(slot, NULL, &n);
    if (rv != CKR_OK)
        return rv;
    CK_MECHANISM_TYPE *all = calloc(n ? n : 1, sizeof *all);
    if (all == NULL)
        return CKR_HOST_MEMORY;
    rv = real.C_GetMechanismList(slot, all, &n);
    CK_ULONG kept = 0;
    for (CK_ULONG i = 0; rv == CKR_OK && i < n; i++)
        if (!combined(all[i]))
            all[kept++] = all[i];
    if (rv == CKR_OK && list != NULL) {
        if (*count < kept)
            rv = CKR_BUFFER_TOO_SMALL;
        else
            memcpy(list, all, kept * sizeof *all);
    }
    if (rv == CKR_OK || rv == CKR_BUFFER_TOO_SMALL)
        *count = kept;
    free(all);
    return rv;
}

static CK_RV shim_GetMechanismInfo(CK_SLOT_ID slot, CK_MECHANISM_TYPE type,
                                   CK_MECHANISM_INFO_PTR info)
{
    if (combined(type))
        return CKR_MECHANISM_INVALID;
    return real.C_GetMechanismInfo(slot, type, info);
}

static CK_RV shim_SignInit(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mechanism,
                           CK_OBJECT_HANDLE key)
{
    if (mechanism != NULL && combined(mechanism->mechanism))
        return CKR_MECHANISM_INVALID;
    return real.C_SignInit(session, mechanism, key);
}

/* Whether a template turns off a use the token fixes: CKA_DECRYPT, CKA_UNWRAP or CKA_DERIVE
   set to false. */
static int turns_off_fixed_use(CK_ATTRIBUTE_PTR template, CK_ULONG count)
{
    for (CK_ULONG i = 0; template != NULL && i < count; i++) {
        CK_ATTRIBUTE_TYPE type = template[i].type;
        if (type != CKA_DECRYPT && type != CKA_UNWRAP && type != CKA_DERIVE)
            continue;
        if (template[i].pValue != NULL && template[i].ulValueLen == sizeof(CK_BBOOL) &&
            *(CK_BBOOL *)template[i].pValue == CK_FALSE)
            return 1;
    }
    return 0;
}

/* Whether a template describes a private key (CKA_CLASS CKO_PRIVATE_KEY). */
static int is_private_key(CK_ATTRIBUTE_PTR template, CK_ULONG count)
{
    for (CK_ULONG i = 0; template != NULL && i < count; i++)
        if (template[i].type == CKA_CLASS && template[i].pValue != NULL &&
            template[i].ulValueLen == sizeof(CK_OBJECT_CLASS) &&
            *(CK_OBJECT_CLASS *)template[i].pValue == CKO_PRIVATE_KEY)
            return 1;
    return 0;
}

static CK_RV shim_GenerateKeyPair(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mechanism,
                                  CK_ATTRIBUTE_PTR public_template, CK_ULONG public_count,
                                  CK_ATTRIBUTE_PTR private_template, CK_ULONG private_count,
                                  CK_OBJECT_HANDLE_PTR public_key,
                                  CK_OBJECT_HANDLE_PTR private_key)
{
    if (turns_off_fixed_use(private_template, private_count))
        return CKR_ATTRIBUTE_VALUE_INVALID;
    return real.C_GenerateKeyPair(session, mechanism, public_template, public_count,
                                  private_template, private_count, public_key, private_key);
}

static CK_RV shim_CreateObject(CK_SESSION_HANDLE session, CK_ATTRIBUTE_PTR template,
                               CK_ULONG count, CK_OBJECT_HANDLE_PTR object)
{
    if (is_private_key(template, count) && turns_off_fixed_use(template, count))
        return CKR_ATTRIBUTE_VALUE_INVALID;
    return real.C_CreateObject(session, template, count, object);
}

static void load(void)
{
    const char *path = getenv("DPOP_SHIM_MODULE");
    if (path == NULL || *path == '\0')
        path = "/usr/lib/softhsm/libsofthsm2.so";
    /* Never closed: the function pointers stay valid for the life of the process. */
    void *module = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (module == NULL) {
        fprintf(stderr, "pkcs11 shim: %s\n", dlerror());
        return;
    }
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(module, "C_GetFunctionList");
    CK_FUNCTION_LIST_PTR list = NULL;
    if (get == NULL || (load_rv = get(&list)) != CKR_OK || list == NULL) {
        fprintf(stderr, "pkcs11 shim: no function list from %s\n", path);
        load_rv = CKR_GENERAL_ERROR;
        return;
    }
    real = *list;
    shim = real;

    bad_utc_time = flag("DPOP_SHIM_BAD_UTCTIME");
    const char *rv = getenv("DPOP_SHIM_TOKEN_INFO_RV");
    token_info_rv = rv != NULL && *rv != '\0' ? (CK_RV)strtoul(rv, NULL, 0) : CKR_OK;
    raw_only = flag("DPOP_SHIM_RAW_ONLY");
    fixed_usage = flag("DPOP_SHIM_FIXED_USAGE");

    shim.C_GetFunctionList = C_GetFunctionList;
    if (bad_utc_time || token_info_rv != CKR_OK)
        shim.C_GetTokenInfo = shim_GetTokenInfo;
    if (raw_only) {
        shim.C_GetMechanismList = shim_GetMechanismList;
        shim.C_GetMechanismInfo = shim_GetMechanismInfo;
        shim.C_SignInit = shim_SignInit;
    }
    if (fixed_usage) {
        shim.C_GenerateKeyPair = shim_GenerateKeyPair;
        shim.C_CreateObject = shim_CreateObject;
    }
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
    if (list == NULL)
        return CKR_ARGUMENTS_BAD;
    pthread_once(&once, load);
    if (load_rv != CKR_OK)
        return load_rv;
    *list = &shim;
    return CKR_OK;
}
