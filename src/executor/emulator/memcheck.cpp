// memcheck.cpp: the emulator's device memory and the checks on every access to it, as
// compute-sanitizer's memcheck makes them on a GPU.
//
// Device memory comes from one reserved range of addresses (the arena), page-aligned (so
// 256-byte aligned like cudaMalloc), with an unmapped guard page after every allocation.
// Two tables, indexed by page, say which allocation covers a page and how many bytes it has
// exactly. The kernel translation units are compiled with the compiler's address-sanitizer
// instrumentation in its "kernel" form (build/emulator.rs): every load and store calls
// `__asan_loadN_noabort(addr)` / `__asan_storeN_noabort(addr)`, defined here, with its size.
// An access to the arena outside the exact bytes of a live allocation, or a 2-, 4-, 8- or
// 16-byte access (float2, float4, int4, double, ...) not aligned to its size, fails the
// launch with one report; so does an access to dynamic shared memory past the bytes the
// launch asked for. Other addresses (a thread's stack, static __shared__ arrays) are not
// checked here: the fiber stacks have guard pages of their own.
#include <stdarg.h>
#include <sys/mman.h>
#include <unistd.h>

#include <map>
#include <mutex>
#include <string>

#include "cuda_emu.h"

namespace emu {
namespace {

constexpr uintptr_t kPageShift = 12;
constexpr uintptr_t kPage = uintptr_t(1) << kPageShift;

// Written once, before the first allocation is handed out; read by every access check.
uintptr_t g_base = 0;
uintptr_t g_len = 0;
uint32_t* g_owner = nullptr;  // per page: 1 + the first page of the allocation covering it
uint64_t* g_bytes = nullptr;  // per first page of an allocation: its exact size in bytes

struct Arena {
    std::mutex mu;
    std::map<uintptr_t, uintptr_t> free_pages;  // first page -> page count, coalesced
    std::map<uintptr_t, uint64_t> live;         // first page -> bytes (for the reports)
    std::string reserve_error;
};

Arena& arena() {
    static Arena* a = new Arena();  // never destroyed: buffers may outlive static destructors
    return *a;
}

void* reserve(size_t bytes) {
    void* p = mmap(nullptr, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? nullptr : p;
}

// Reserves the address range and its tables once; the largest of 256, 64 or 16 GiB that
// the process may map.
bool ensure_arena(Arena& a) {
    if (g_base) return true;
    if (!a.reserve_error.empty()) return false;
    if (sysconf(_SC_PAGESIZE) != static_cast<long>(kPage)) {
        a.reserve_error = "the emulator's device memory needs 4 KiB pages";
        return false;
    }
    for (uintptr_t gib : {256, 64, 16}) {
        uintptr_t len = gib << 30, pages = len >> kPageShift;
        void* base = reserve(len);
        if (!base) continue;
        void* owner = mmap(nullptr, pages * sizeof(uint32_t), PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        void* bytes = mmap(nullptr, pages * sizeof(uint64_t), PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (owner == MAP_FAILED || bytes == MAP_FAILED) {
            munmap(base, len);
            if (owner != MAP_FAILED) munmap(owner, pages * sizeof(uint32_t));
            if (bytes != MAP_FAILED) munmap(bytes, pages * sizeof(uint64_t));
            continue;
        }
        g_owner = static_cast<uint32_t*>(owner);
        g_bytes = static_cast<uint64_t*>(bytes);
        a.free_pages[0] = pages;
        g_len = len;
        __atomic_store_n(&g_base, reinterpret_cast<uintptr_t>(base), __ATOMIC_RELEASE);
        return true;
    }
    a.reserve_error = "cannot reserve 16 GiB of addresses for the emulator's device memory";
    return false;
}

void set_owner(uintptr_t first, uintptr_t pages, uint32_t value) {
    for (uintptr_t p = first; p < first + pages; ++p) __atomic_store_n(&g_owner[p], value, __ATOMIC_RELAXED);
}

std::string strf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string strf(const char* fmt, ...) {
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

// "8 bytes after the end of the 4000-byte allocation at 0x..." for an address outside every
// live allocation (or straddling the end of one).
std::string nearest_allocation(uintptr_t addr, size_t size) {
    Arena& a = arena();
    std::lock_guard<std::mutex> g(a.mu);
    const std::pair<const uintptr_t, uint64_t>* best = nullptr;
    uintptr_t best_distance = UINTPTR_MAX;
    for (const auto& e : a.live) {
        uintptr_t start = g_base + (e.first << kPageShift), end = start + e.second;
        uintptr_t d = addr + size <= start ? start - addr : addr >= end ? addr - end + 1 : 0;
        if (d < best_distance) best_distance = d, best = &e;
    }
    if (!best) return "no allocation is live";
    uintptr_t start = g_base + (best->first << kPageShift), end = start + best->second;
    std::string where = addr < start ? strf("%zu bytes before the start", static_cast<size_t>(start - addr))
                        : addr >= end
                            ? strf("%zu bytes after the end", static_cast<size_t>(addr - end))
                            : strf("%zu bytes past the end", static_cast<size_t>(addr + size - end));
    return where + strf(" of the nearest allocation, %llu bytes at 0x%llx",
                        static_cast<unsigned long long>(best->second), static_cast<unsigned long long>(start));
}

[[noreturn]] void report(const char* space, uintptr_t addr, size_t size, bool write, const std::string& why) {
    memory_fault(strf("invalid %s %s of %zu bytes at 0x%llx (%s)", space, write ? "write" : "read", size,
                      static_cast<unsigned long long>(addr), why.c_str())
                     .c_str());
}

inline void check(uintptr_t addr, size_t size, bool write) {
    if (__builtin_expect(!memcheck_on || size == 0, 0)) return;
    uintptr_t off = addr - g_base;
    if (__builtin_expect(off < g_len, 1)) {
        uint32_t owner = __atomic_load_n(&g_owner[off >> kPageShift], __ATOMIC_RELAXED);
        if (__builtin_expect(owner != 0, 1)) {
            uintptr_t first = owner - 1;
            uintptr_t end = (first << kPageShift) + g_bytes[first];
            if (__builtin_expect(off + size <= end, 1)) {
                if (__builtin_expect((size & (size - 1)) == 0 && size <= 16 && (addr & (size - 1)) != 0, 0))
                    report("global", addr, size, write,
                           strf("misaligned address: a %zu-byte access must be %zu-byte aligned", size, size));
                return;
            }
        }
        report("global", addr, size, write, nearest_allocation(addr, size));
    }
    const uintptr_t dyn = dyn_shared_base, used = dyn_shared_used;
    if (addr - dyn < dyn_shared_mapped) {
        if (addr + size > dyn + used)
            report("shared", addr, size, write,
                   strf("%zu bytes past the end of the launch's %zu bytes of dynamic shared memory",
                        static_cast<size_t>(addr + size - dyn - used), static_cast<size_t>(used)));
        if ((size & (size - 1)) == 0 && size <= 16 && (addr & (size - 1)) != 0)
            report("shared", addr, size, write,
                   strf("misaligned address: a %zu-byte access must be %zu-byte aligned", size, size));
    }
}

}  // namespace
}  // namespace emu

// ---- the instrumentation's entry points ---------------------------------------------------------
#define FOCALFLOW_EMU_ACCESS(n)                                                                       \
    extern "C" void __asan_load##n##_noabort(uintptr_t a) { emu::check(a, n, false); }               \
    extern "C" void __asan_store##n##_noabort(uintptr_t a) { emu::check(a, n, true); }
FOCALFLOW_EMU_ACCESS(1)
FOCALFLOW_EMU_ACCESS(2)
FOCALFLOW_EMU_ACCESS(4)
FOCALFLOW_EMU_ACCESS(8)
FOCALFLOW_EMU_ACCESS(16)
extern "C" void __asan_loadN_noabort(uintptr_t a, size_t n) { emu::check(a, n, false); }
extern "C" void __asan_storeN_noabort(uintptr_t a, size_t n) { emu::check(a, n, true); }
// Called before a noreturn call (a trap); nothing to do here.
extern "C" void __asan_handle_no_return() {}

// ---- allocation (src/executor/emu/memory.rs) ----------------------------------------------------

// `bytes` of device memory, every byte set to `fill`; null with a message in `err` when the
// arena is full or cannot be reserved.
extern "C" void* focalflow_emu_device_alloc(size_t bytes, unsigned char fill, char* err, size_t err_len) {
    using namespace emu;
    Arena& a = arena();
    std::lock_guard<std::mutex> g(a.mu);
    if (!ensure_arena(a)) {
        snprintf(err, err_len, "%s", a.reserve_error.c_str());
        return nullptr;
    }
    if (bytes > g_len - kPage) {  // (also keeps the rounding below from wrapping)
        snprintf(err, err_len,
                 "out of emulated device memory: %zu bytes do not fit in the %llu GiB the emulator reserved", bytes,
                 static_cast<unsigned long long>(g_len >> 30));
        return nullptr;
    }
    uintptr_t pages = (bytes + kPage - 1) >> kPageShift;
    if (pages == 0) pages = 1;
    uintptr_t need = pages + 1;  // the guard page
    for (auto it = a.free_pages.begin(); it != a.free_pages.end(); ++it) {
        if (it->second < need) continue;
        uintptr_t first = it->first, left = it->second - need;
        a.free_pages.erase(it);
        if (left) a.free_pages[first + need] = left;
        char* p = reinterpret_cast<char*>(g_base + (first << kPageShift));
        if (mprotect(p, pages << kPageShift, PROT_READ | PROT_WRITE) != 0) {
            a.free_pages[first] = need;  // not coalesced; rare enough
            snprintf(err, err_len, "cannot map %zu bytes of emulated device memory", bytes);
            return nullptr;
        }
        memset(p, fill, pages << kPageShift);
        g_bytes[first] = bytes;
        set_owner(first, pages, static_cast<uint32_t>(first + 1));
        a.live[first] = bytes;
        return p;
    }
    snprintf(err, err_len,
             "out of emulated device memory: %zu bytes do not fit in the %llu GiB the emulator reserved", bytes,
             static_cast<unsigned long long>(g_len >> 30));
    return nullptr;
}

// Releases an allocation: its pages are unmapped (a later access by the host faults, by a
// kernel is reported) and return to the free list.
extern "C" void focalflow_emu_device_free(void* ptr) {
    using namespace emu;
    if (!ptr) return;
    Arena& a = arena();
    std::lock_guard<std::mutex> g(a.mu);
    uintptr_t first = (reinterpret_cast<uintptr_t>(ptr) - g_base) >> kPageShift;
    auto it = a.live.find(first);
    if (it == a.live.end()) {
        fprintf(stderr, "focalflow emulator: free of %p, which is not a live device allocation\n", ptr);
        abort();
    }
    uintptr_t pages = (it->second + kPage - 1) >> kPageShift;
    if (pages == 0) pages = 1;
    a.live.erase(it);
    set_owner(first, pages, 0);
    madvise(ptr, pages << kPageShift, MADV_DONTNEED);
    mprotect(ptr, pages << kPageShift, PROT_NONE);
    uintptr_t start = first, count = pages + 1;
    auto next = a.free_pages.lower_bound(start);
    if (next != a.free_pages.end() && next->first == start + count) {
        count += next->second;
        next = a.free_pages.erase(next);
    }
    if (next != a.free_pages.begin()) {
        auto prev = std::prev(next);
        if (prev->first + prev->second == start) {
            start = prev->first;
            count += prev->second;
            a.free_pages.erase(prev);
        }
    }
    a.free_pages[start] = count;
}
