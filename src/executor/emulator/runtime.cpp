// The CUDA emulator's runtime: fibers, the per-block scheduler, barriers, warp collectives
// and the pool of OS threads that runs the blocks. See cuda_emu.h for the model.
//
// A block runs on one OS thread: each of its CUDA threads is a fiber with its own small
// stack. The scheduler resumes the runnable fibers in the chosen order (forward, reverse
// or a random permutation per sweep); a fiber runs until it reaches a barrier, a warp
// collective, or the end of the kernel. When no fiber can run, either every thread waits
// at the same __syncthreads (release them), or the block is stuck: a divergent barrier or
// a deadlock, reported with the kernel's name and the source lines involved.
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

// After the standard headers: cuda_emu.h defines __noinline__, which libstdc++ uses.
#include "cuda_emu.h"

#if defined(__x86_64__) && defined(__linux__) && !defined(FOCALFLOW_EMU_UCONTEXT)
#define FOCALFLOW_EMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

#ifdef FOCALFLOW_EMU_ASM_SWITCH
// switch(save, load): pushes the callee-saved registers, stores the stack pointer in *save,
// loads `load` as the stack pointer, pops the registers saved there and returns into that
// context. A new fiber's stack is prepared so that this "returns" into fiber_start, which
// calls the C++ entry (held in r13) with the fiber (held in r12). MXCSR/x87 control words
// are not switched: kernels do not change rounding modes.
extern "C" void focalflow_emu_switch(void** save, void* load);
extern "C" void focalflow_emu_fiber_start();
__asm__(R"(
    .text
    .globl focalflow_emu_switch
    .hidden focalflow_emu_switch
    .type focalflow_emu_switch,@function
    .p2align 4
focalflow_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size focalflow_emu_switch, .-focalflow_emu_switch

    .globl focalflow_emu_fiber_start
    .hidden focalflow_emu_fiber_start
    .type focalflow_emu_fiber_start,@function
    .p2align 4
focalflow_emu_fiber_start:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size focalflow_emu_fiber_start, .-focalflow_emu_fiber_start
)");
#endif

namespace emu {

thread_local Coords coords;
thread_local bool memcheck_on = false;
thread_local uintptr_t dyn_shared_base = 0, dyn_shared_used = 0, dyn_shared_mapped = 0;

namespace {

enum class St : uint8_t { Ready, AtBlock, AtWarp, Done, Failed };

struct Fiber {
#ifdef FOCALFLOW_EMU_ASM_SWITCH
    void* sp;
#else
    ucontext_t uc;
#endif
    St st;
    int op;
    uint3 tid;
    unsigned linear;
    const char* file;
    int line;
    unsigned mask;
    int arg;
    int width;
    uint64_t value;
    uint64_t result;
};

struct Job {
    const LaunchParams* p;
    const char* kernel;
    const char* file;
    Trampoline body;
    void* ctx;
    uint64_t nblocks;
    std::atomic<uint64_t> next_block{0};
    std::atomic<bool> failed{false};
    std::mutex err_mu;
    std::string err;

    void fail(const std::string& msg) {
        std::lock_guard<std::mutex> g(err_mu);
        if (err.empty()) err = msg;
        failed.store(true);
    }
};

// Everything one OS thread needs to run blocks; lives as long as the pool thread.
struct Worker {
    char* stacks = nullptr;
    size_t stacks_len = 0;
    size_t stack_stride = 0;
    size_t stack_bytes = 0;
    unsigned nstacks = 0;
    std::vector<Fiber> fibers;
    std::vector<unsigned> order;
    std::vector<unsigned> warp_arrived;  // lanes of each warp waiting at a collective
    unsigned char* dyn = nullptr;
    size_t dyn_cap = 0;
#ifdef FOCALFLOW_EMU_ASM_SWITCH
    void* sched_sp = nullptr;
#else
    ucontext_t sched_uc;
#endif
    Fiber* cur = nullptr;
    Job* job = nullptr;
    unsigned nthreads = 0;
    std::string block_err;  // set by a fiber that fails (trap, bad mask)
};

thread_local Worker* t_worker = nullptr;

size_t page_size() {
    static const size_t ps = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    return ps;
}

std::string strf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string strf(const char* fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return std::string(buf);
}

void copy_err(const std::string& msg, char* err, size_t err_len) {
    if (err == nullptr || err_len == 0) return;
    size_t n = msg.size() < err_len - 1 ? msg.size() : err_len - 1;
    memcpy(err, msg.data(), n);
    err[n] = 0;
}

// ---- fibers ---------------------------------------------------------------------------------

// Fiber stacks: one mapping per worker, a PROT_NONE guard page below each stack so that an
// overflow faults instead of corrupting the neighbour.
bool ensure_stacks(Worker& w, unsigned n, size_t stack_bytes) {
    size_t ps = page_size();
    stack_bytes = (stack_bytes + ps - 1) / ps * ps;
    if (w.nstacks >= n && w.stack_bytes == stack_bytes) return true;
    if (w.stacks) munmap(w.stacks, w.stacks_len);
    w.stacks = nullptr;
    w.nstacks = 0;
    size_t stride = stack_bytes + ps;
    size_t len = stride * n;
    void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (m == MAP_FAILED) return false;
    w.stacks = static_cast<char*>(m);
    w.stacks_len = len;
    w.stack_stride = stride;
    w.stack_bytes = stack_bytes;
    w.nstacks = n;
    for (unsigned i = 0; i < n; ++i) mprotect(w.stacks + i * stride, ps, PROT_NONE);
    return true;
}

void fiber_entry(Fiber* f);

#ifdef FOCALFLOW_EMU_ASM_SWITCH
extern "C" void focalflow_emu_fiber_entry(Fiber* f) { fiber_entry(f); }

void init_fiber(Worker& w, Fiber& f, unsigned i) {
    char* top = w.stacks + i * w.stack_stride + w.stack_stride;  // 16-aligned (page aligned)
    void** sp = reinterpret_cast<void**>(top - 56);
    sp[0] = nullptr;                                                    // r15
    sp[1] = nullptr;                                                    // r14
    sp[2] = reinterpret_cast<void*>(&focalflow_emu_fiber_entry);        // r13
    sp[3] = &f;                                                         // r12
    sp[4] = nullptr;                                                    // rbx
    sp[5] = nullptr;                                                    // rbp
    sp[6] = reinterpret_cast<void*>(&focalflow_emu_fiber_start);        // return address
    f.sp = sp;
}
inline void switch_to_fiber(Worker& w, Fiber& f) { focalflow_emu_switch(&w.sched_sp, f.sp); }
inline void switch_to_scheduler(Worker& w, Fiber& f) { focalflow_emu_switch(&f.sp, w.sched_sp); }
#else
void uc_entry() { fiber_entry(t_worker->cur); }
void init_fiber(Worker& w, Fiber& f, unsigned i) {
    getcontext(&f.uc);
    f.uc.uc_stack.ss_sp = w.stacks + i * w.stack_stride + page_size();
    f.uc.uc_stack.ss_size = w.stack_bytes;
    f.uc.uc_link = nullptr;
    makecontext(&f.uc, uc_entry, 0);
}
inline void switch_to_fiber(Worker& w, Fiber& f) { swapcontext(&w.sched_uc, &f.uc); }
inline void switch_to_scheduler(Worker& w, Fiber& f) { swapcontext(&f.uc, &w.sched_uc); }
#endif

void fiber_entry(Fiber* f) {
    Worker& w = *t_worker;
    w.job->body(w.job->ctx);
    f->st = St::Done;
    switch_to_scheduler(w, *f);
    __builtin_trap();  // a finished fiber is never resumed
}

Worker& current_worker(const char* what) {
    Worker* w = t_worker;
    if (w == nullptr || w->cur == nullptr) {
        fprintf(stderr, "focalflow emulator: %s called outside a kernel launch\n", what);
        abort();
    }
    return *w;
}

[[noreturn]] void fail_fiber(Worker& w, Fiber& f, const std::string& msg) {
    if (w.block_err.empty()) w.block_err = msg;
    f.st = St::Failed;
    switch_to_scheduler(w, f);
    __builtin_trap();  // a failed fiber is never resumed
}

// ---- describing a stuck block ---------------------------------------------------------------------

const char* warp_op_name(int op) {
    switch (static_cast<WarpOp>(op)) {
        case WarpOp::SyncWarp: return "__syncwarp";
        case WarpOp::Shfl: return "__shfl_sync";
        case WarpOp::ShflUp: return "__shfl_up_sync";
        case WarpOp::ShflDown: return "__shfl_down_sync";
        case WarpOp::ShflXor: return "__shfl_xor_sync";
        case WarpOp::All: return "__all_sync";
        case WarpOp::Any: return "__any_sync";
        case WarpOp::Ballot: return "__ballot_sync";
        case WarpOp::ReduceAdd: return "__reduce_add_sync";
        case WarpOp::ReduceMin:
        case WarpOp::ReduceMinU: return "__reduce_min_sync";
        case WarpOp::ReduceMax:
        case WarpOp::ReduceMaxU: return "__reduce_max_sync";
    }
    return "warp collective";
}
const char* block_op_name(int op) {
    switch (static_cast<BlockOp>(op)) {
        case BlockOp::Sync: return "__syncthreads";
        case BlockOp::Count: return "__syncthreads_count";
        case BlockOp::And: return "__syncthreads_and";
        case BlockOp::Or: return "__syncthreads_or";
    }
    return "barrier";
}

std::string where(const Fiber& f) {
    if (f.st == St::Done) return "exited";
    if (f.st == St::Ready) return "runnable";
    const char* name = f.st == St::AtBlock ? block_op_name(f.op) : warp_op_name(f.op);
    std::string s = strf("wait at %s (%s:%d)", name, f.file, f.line);
    if (f.st == St::AtWarp) s += strf(" with mask 0x%08x", f.mask);
    return s;
}

// "16 thread(s) [0-15] wait at __syncthreads (file:line); 16 thread(s) [16-31] exited"
std::string describe(const Worker& w) {
    std::vector<std::string> keys;
    std::vector<std::vector<unsigned>> members;
    for (unsigned i = 0; i < w.nthreads; ++i) {
        std::string k = where(w.fibers[i]);
        size_t j = 0;
        while (j < keys.size() && keys[j] != k) ++j;
        if (j == keys.size()) {
            keys.push_back(k);
            members.emplace_back();
        }
        members[j].push_back(i);
    }
    std::string out;
    for (size_t j = 0; j < keys.size(); ++j) {
        const std::vector<unsigned>& m = members[j];
        if (!out.empty()) out += "; ";
        out += strf("%zu thread(s) [", m.size());
        size_t ranges = 0;
        for (size_t a = 0; a < m.size();) {
            size_t b = a;
            while (b + 1 < m.size() && m[b + 1] == m[b] + 1) ++b;
            if (ranges == 4) {
                out += ",...";
                break;
            }
            if (ranges) out += ",";
            out += a == b ? strf("%u", m[a]) : strf("%u-%u", m[a], m[b]);
            ++ranges;
            a = b + 1;
        }
        out += "] " + keys[j];
    }
    return out;
}

// ---- warp collectives ------------------------------------------------------------------------------

unsigned existing_lanes(const Worker& w, unsigned warp) {
    unsigned base = warp * 32;
    unsigned n = w.nthreads - base < 32 ? w.nthreads - base : 32;
    return n == 32 ? 0xffffffffu : ((1u << n) - 1u);
}

// Called after fiber `f` arrived at a warp collective: completes it if every lane named
// in the mask has arrived. Returns false (with a message) on mismatched collectives.
bool try_complete_warp(Worker& w, Fiber& f, std::string& err) {
    unsigned warp = f.linear / 32, base = warp * 32;
    unsigned part = f.mask & existing_lanes(w, warp);
    unsigned need = static_cast<unsigned>(__builtin_popcount(part));
    if (++w.warp_arrived[warp] < need) return true;  // cheap test before the full one
    for (unsigned l = 0; l < 32; ++l) {
        if (!(part >> l & 1u)) continue;
        const Fiber& g = w.fibers[base + l];
        if (g.st != St::AtWarp) return true;  // not everybody is there yet
        if (g.mask != f.mask || g.op != f.op || g.width != f.width) {
            err = strf("mismatched warp collectives in warp %u: thread %u is at %s (%s:%d) with mask 0x%08x, "
                       "thread %u at %s (%s:%d) with mask 0x%08x",
                       warp, g.linear, warp_op_name(g.op), g.file, g.line, g.mask, f.linear,
                       warp_op_name(f.op), f.file, f.line, f.mask);
            return false;
        }
    }
    const uint64_t poison = ~uint64_t(0);
    WarpOp op = static_cast<WarpOp>(f.op);
    uint64_t acc = 0;
    bool all = true, any = false;
    int64_t smin = INT64_MAX, smax = INT64_MIN;
    uint64_t umin = UINT64_MAX, umax = 0;
    for (unsigned l = 0; l < 32; ++l) {
        if (!(part >> l & 1u)) continue;
        const Fiber& g = w.fibers[base + l];
        bool p = g.value != 0;
        all = all && p;
        any = any || p;
        if (op == WarpOp::Ballot && p) acc |= 1ull << l;
        if (op == WarpOp::ReduceAdd) acc = static_cast<uint32_t>(acc + g.value);
        int64_t sv = static_cast<int64_t>(g.value);
        smin = sv < smin ? sv : smin;
        smax = sv > smax ? sv : smax;
        umin = g.value < umin ? g.value : umin;
        umax = g.value > umax ? g.value : umax;
    }
    for (unsigned l = 0; l < 32; ++l) {
        if (!(part >> l & 1u)) continue;
        Fiber& g = w.fibers[base + l];
        int width = g.width;
        unsigned seg = l & ~static_cast<unsigned>(width - 1);
        unsigned local = l - seg;
        long src = -1;
        switch (op) {
            case WarpOp::SyncWarp: g.result = 0; break;
            case WarpOp::Shfl: src = seg + ((g.arg % width) + width) % width; break;
            case WarpOp::ShflUp:
                src = local >= static_cast<unsigned>(g.arg) ? static_cast<long>(l) - g.arg : l;
                break;
            case WarpOp::ShflDown:
                src = local + static_cast<unsigned>(g.arg) < static_cast<unsigned>(width) ? l + g.arg : l;
                break;
            case WarpOp::ShflXor: {
                unsigned s = l ^ static_cast<unsigned>(g.arg);
                src = (s < 32 && (s & ~static_cast<unsigned>(width - 1)) <= seg) ? s : l;
                break;
            }
            case WarpOp::All: g.result = all; break;
            case WarpOp::Any: g.result = any; break;
            case WarpOp::Ballot: g.result = acc; break;
            case WarpOp::ReduceAdd: g.result = acc; break;
            case WarpOp::ReduceMin: g.result = static_cast<uint64_t>(smin); break;
            case WarpOp::ReduceMax: g.result = static_cast<uint64_t>(smax); break;
            case WarpOp::ReduceMinU: g.result = umin; break;
            case WarpOp::ReduceMaxU: g.result = umax; break;
        }
        if (src >= 0) {
            // Reading a lane that does not take part (or does not exist) is undefined on the
            // GPU: return all-ones bits (NaN, -1) so that a test notices.
            g.result = (part >> src & 1u) ? w.fibers[base + src].value : poison;
        }
    }
    for (unsigned l = 0; l < 32; ++l)
        if (part >> l & 1u) w.fibers[base + l].st = St::Ready;
    w.warp_arrived[warp] -= need;
    return true;
}

// ---- the block scheduler ------------------------------------------------------------------------------

uint64_t splitmix(uint64_t& s) {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// Runs one block to completion; false with a message when it fails.
bool run_block(Worker& w, Job& j, uint64_t b, std::string& err) {
    const LaunchParams& p = *j.p;
    coords.block_idx = uint3{static_cast<unsigned>(b % p.grid[0]),
                             static_cast<unsigned>((b / p.grid[0]) % p.grid[1]),
                             static_cast<unsigned>(b / (static_cast<uint64_t>(p.grid[0]) * p.grid[1]))};
    coords.block_dim = dim3(p.block[0], p.block[1], p.block[2]);
    coords.grid_dim = dim3(p.grid[0], p.grid[1], p.grid[2]);
    unsigned n = p.block[0] * p.block[1] * p.block[2];
    w.nthreads = n;
    w.block_err.clear();
    if (!ensure_stacks(w, n, p.stack_bytes)) {
        err = strf("cannot map %u fiber stacks of %u bytes", n, p.stack_bytes);
        return false;
    }
    if (w.fibers.size() < n) w.fibers.resize(n);
    for (unsigned i = 0; i < n; ++i) {
        Fiber& f = w.fibers[i];
        f.st = St::Ready;
        f.linear = i;
        f.tid = uint3{i % p.block[0], (i / p.block[0]) % p.block[1], i / (p.block[0] * p.block[1])};
        f.file = "";
        f.line = 0;
        init_fiber(w, f, i);
    }
    // Dynamic shared memory starts as all-ones bytes (NaN, -1): reads before writes show up.
    if (p.dynamic_shared_bytes) memset(w.dyn, 0xff, p.dynamic_shared_bytes);

    w.order.resize(n);
    w.warp_arrived.assign((n + 31) / 32, 0);
    uint64_t rng = p.seed ^ (b * 0xd1b54a32d192ed03ull);
    for (unsigned i = 0; i < n; ++i) w.order[i] = p.schedule == 1 ? n - 1 - i : i;

    for (;;) {
        if (p.schedule == 2) {
            for (unsigned i = n - 1; i > 0; --i) {
                unsigned k = static_cast<unsigned>(splitmix(rng) % (i + 1));
                unsigned t = w.order[i];
                w.order[i] = w.order[k];
                w.order[k] = t;
            }
        }
        bool ran = false;
        for (unsigned idx = 0; idx < n; ++idx) {
            Fiber& f = w.fibers[w.order[idx]];
            if (f.st != St::Ready) continue;
            ran = true;
            coords.thread_idx = f.tid;
            w.cur = &f;
            switch_to_fiber(w, f);
            w.cur = nullptr;
            if (f.st == St::Failed) {
                err = w.block_err;
                return false;
            }
            if (f.st == St::AtWarp && !try_complete_warp(w, f, err)) return false;
        }
        if (ran) continue;

        // Nobody can run: finished, a barrier to release, or stuck.
        unsigned done = 0, at_block = 0;
        const Fiber* first = nullptr;
        bool same_site = true;
        for (unsigned i = 0; i < n; ++i) {
            const Fiber& f = w.fibers[i];
            if (f.st == St::Done) {
                ++done;
            } else if (f.st == St::AtBlock) {
                ++at_block;
                if (!first) first = &f;
                else if (f.line != first->line || f.op != first->op || strcmp(f.file, first->file) != 0)
                    same_site = false;
            }
        }
        if (done == n) return true;
        if (at_block == n && same_site) {
            BlockOp op = static_cast<BlockOp>(first->op);
            unsigned count = 0;
            for (unsigned i = 0; i < n; ++i) count += w.fibers[i].value != 0;
            uint64_t r = op == BlockOp::Count ? count
                         : op == BlockOp::And ? (count == n)
                         : op == BlockOp::Or  ? (count > 0)
                                              : 0;
            for (unsigned i = 0; i < n; ++i) {
                w.fibers[i].result = r;
                w.fibers[i].st = St::Ready;
            }
            continue;
        }
        err = strf("%s in block (%u,%u,%u): ",
                   at_block + done == n ? "divergent __syncthreads (every thread of the block must reach the same barrier)"
                                        : "deadlock (a barrier or warp collective that some threads never reach)",
                   coords.block_idx.x, coords.block_idx.y, coords.block_idx.z) +
              describe(w);
        return false;
    }
}

void run_blocks(Job& j) {
    Worker& w = *t_worker;
    w.job = &j;
    const LaunchParams& p = *j.p;
    memcheck_on = p.memcheck != 0;
    // 256 bytes of slack past the rounded size, so that an access just past the bytes the
    // launch asked for lands in the buffer and is reported by memcheck.cpp, not in the heap.
    if (p.dynamic_shared_bytes + 256 > w.dyn_cap) {
        free(w.dyn);
        size_t cap = (p.dynamic_shared_bytes + 255) / 256 * 256 + 256;
        w.dyn = static_cast<unsigned char*>(aligned_alloc(256, cap));
        w.dyn_cap = w.dyn ? cap : 0;
        if (!w.dyn) {
            j.fail("cannot allocate the dynamic shared memory buffer");
            return;
        }
    }
    dyn_shared_base = reinterpret_cast<uintptr_t>(w.dyn);
    dyn_shared_used = p.dynamic_shared_bytes;
    dyn_shared_mapped = w.dyn_cap;
    std::string err;
    while (!j.failed.load(std::memory_order_relaxed)) {
        uint64_t b = j.next_block.fetch_add(1);
        if (b >= j.nblocks) break;
        if (!run_block(w, j, b, err)) {
            j.fail(err);
            break;
        }
    }
    w.job = nullptr;
}

// ---- the pool of OS threads ---------------------------------------------------------------------------

struct Pool {
    std::mutex launch_mu;  // one launch at a time
    std::mutex mu;
    std::condition_variable cv_work, cv_done;
    Job* job = nullptr;
    uint64_t generation = 0;
    unsigned want = 0;
    unsigned remaining = 0;
    unsigned nthreads = 0;
};

Pool& pool() {
    static Pool* p = new Pool();  // never destroyed: its threads live until the process ends
    return *p;
}

// ---- fiber stack overflow -------------------------------------------------------------------------
// A CUDA thread that overflows its fiber stack hits the guard page below it. The pool
// threads handle SIGSEGV on an alternate stack: a fault inside the fiber stacks fails the
// launch with a message (the fiber is abandoned, as after a trap); any other fault goes to
// the handler that was installed before (Rust's, or the default).
struct sigaction g_prev_segv;

void segv_handler(int sig, siginfo_t* info, void* uctx) {
    Worker* w = t_worker;
    char* addr = static_cast<char*>(info->si_addr);
    if (w && w->cur && w->stacks && addr >= w->stacks && addr < w->stacks + w->stacks_len) {
        // Leave the handler for good: unblock SIGSEGV, then switch to the scheduler.
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGSEGV);
        pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
        fail_fiber(*w, *w->cur,
                   strf("CUDA thread %u overflowed its %zu-byte emulator stack (local arrays too large?): "
                        "raise FOCALFLOW_EMU_STACK_KB or EmuOptions::stack_bytes",
                        w->cur->linear, w->stack_bytes));
    }
    if (g_prev_segv.sa_flags & SA_SIGINFO) {
        if (g_prev_segv.sa_sigaction) g_prev_segv.sa_sigaction(sig, info, uctx);
    } else if (g_prev_segv.sa_handler != SIG_DFL && g_prev_segv.sa_handler != SIG_IGN) {
        g_prev_segv.sa_handler(sig);
    } else {
        signal(sig, SIG_DFL);  // the fault repeats and takes the default action
    }
}

void install_overflow_handler() {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = segv_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_prev_segv);
}

void worker_main(unsigned index) {
    t_worker = new Worker();
    stack_t alt;
    alt.ss_size = 64 * 1024;
    alt.ss_sp = malloc(alt.ss_size);
    alt.ss_flags = 0;
    if (alt.ss_sp) sigaltstack(&alt, nullptr);
    Pool& P = pool();
    uint64_t seen = 0;
    for (;;) {
        Job* j;
        {
            std::unique_lock<std::mutex> lk(P.mu);
            P.cv_work.wait(lk, [&] { return P.generation != seen; });
            seen = P.generation;
            if (index >= P.want) continue;
            j = P.job;
        }
        run_blocks(*j);
        std::lock_guard<std::mutex> g(P.mu);
        if (--P.remaining == 0) P.cv_done.notify_all();
    }
}

}  // namespace

// ---- entry points ---------------------------------------------------------------------------------------

int run_grid(const LaunchParams* p, const char* kernel, const char* file, Trampoline body, void* ctx,
             char* err, size_t err_len) {
    uint64_t threads = uint64_t(p->block[0]) * p->block[1] * p->block[2];
    uint64_t nblocks = uint64_t(p->grid[0]) * p->grid[1] * p->grid[2];
    if (threads == 0 || threads > 1024 || nblocks == 0) {
        copy_err(strf("emulator: kernel `%s`: invalid launch shape grid (%u,%u,%u) block (%u,%u,%u)",
                      kernel, p->grid[0], p->grid[1], p->grid[2], p->block[0], p->block[1], p->block[2]),
                 err, err_len);
        return 1;
    }
    Job j;
    j.p = p;
    j.kernel = kernel;
    j.file = file;
    j.body = body;
    j.ctx = ctx;
    j.nblocks = nblocks;
    Pool& P = pool();
    std::lock_guard<std::mutex> launch(P.launch_mu);
    static std::once_flag handler_once;
    std::call_once(handler_once, install_overflow_handler);
    unsigned want = p->threads ? p->threads : 1;
    if (nblocks < want) want = static_cast<unsigned>(nblocks);
    {
        std::unique_lock<std::mutex> lk(P.mu);
        while (P.nthreads < want) {
            std::thread(worker_main, P.nthreads).detach();
            ++P.nthreads;
        }
        P.job = &j;
        P.want = want;
        P.remaining = want;
        ++P.generation;
        P.cv_work.notify_all();
        P.cv_done.wait(lk, [&] { return P.remaining == 0; });
        P.job = nullptr;
    }
    if (j.failed.load()) {
        copy_err(strf("emulator: kernel `%s` (%s): ", kernel, file) + j.err, err, err_len);
        return 1;
    }
    return 0;
}

int block_barrier(const char* file, int line, BlockOp op, int value) {
    Worker& w = current_worker("__syncthreads");
    Fiber& f = *w.cur;
    f.st = St::AtBlock;
    f.op = static_cast<int>(op);
    f.file = file;
    f.line = line;
    f.value = static_cast<uint64_t>(value);
    switch_to_scheduler(w, f);
    return static_cast<int>(f.result);
}

uint64_t warp_collective(const char* file, int line, WarpOp op, unsigned mask, uint64_t value, int arg,
                         int width) {
    Worker& w = current_worker("a warp collective");
    Fiber& f = *w.cur;
    unsigned lane = f.linear % 32;
    f.file = file;
    f.line = line;
    f.op = static_cast<int>(op);
    if (!(mask >> lane & 1u))
        fail_fiber(w, f, strf("%s (%s:%d): mask 0x%08x does not include the calling lane %u (thread %u)",
                              warp_op_name(f.op), file, line, mask, lane, f.linear));
    if (width < 1 || width > 32 || (width & (width - 1)) != 0)
        fail_fiber(w, f, strf("%s (%s:%d): width %d is not a power of two in 1..32", warp_op_name(f.op), file,
                              line, width));
    f.st = St::AtWarp;
    f.mask = mask;
    f.value = value;
    f.arg = arg;
    f.width = width;
    switch_to_scheduler(w, f);
    return f.result;
}

void trap(const char* file, int line, const char* what) {
    Worker& w = current_worker(what);
    fail_fiber(w, *w.cur, strf("%s at %s:%d in thread (%u,%u,%u) of block (%u,%u,%u)", what, file, line,
                               coords.thread_idx.x, coords.thread_idx.y, coords.thread_idx.z,
                               coords.block_idx.x, coords.block_idx.y, coords.block_idx.z));
}

void* dynamic_shared() {
    Worker* w = t_worker;
    return w ? w->dyn : nullptr;
}

void memory_fault(const char* what) {
    Worker& w = current_worker(what);
    fail_fiber(w, *w.cur, strf("%s by thread (%u,%u,%u) in block (%u,%u,%u)", what, coords.thread_idx.x,
                               coords.thread_idx.y, coords.thread_idx.z, coords.block_idx.x, coords.block_idx.y,
                               coords.block_idx.z));
}

unsigned active_lanes_mask() {
    Worker& w = current_worker("__activemask");
    unsigned warp = w.cur->linear / 32, m = 0;
    for (unsigned l = 0; l < 32 && warp * 32 + l < w.nthreads; ++l)
        if (w.fibers[warp * 32 + l].st != St::Done) m |= 1u << l;
    return m;
}

long long clock_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

int report_arg_mismatch(const char* kernel, const uint32_t* expected, uint32_t n_expected, const uint32_t* got,
                        uint32_t n_got, char* err, size_t err_len) {
    std::string e, g;
    for (uint32_t i = 0; i < n_expected; ++i) e += (i ? "," : "") + std::to_string(expected[i]);
    for (uint32_t i = 0; i < n_got; ++i) g += (i ? "," : "") + std::to_string(got[i]);
    copy_err(strf("emulator: kernel `%s` takes %u argument(s) of sizes [%s] bytes, the launch passed %u of sizes [%s]",
                  kernel, n_expected, e.c_str(), n_got, g.c_str()),
             err, err_len);
    return 1;
}

}  // namespace emu
