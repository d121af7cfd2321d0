/* Test harness only, never shipped: Wine 8.0 (Debian 12) has no bcryptprimitives.dll, whose
 * ProcessPrng is where Rust's standard library gets its randomness on Windows. This stand-in
 * forwards to RtlGenRandom (advapi32's SystemFunction036), which Wine has. The Wine tests
 * (tests/src/wine.rs) build it with mingw-w64 into their Wine prefix. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len) {
        ULONG n = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, n))
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
