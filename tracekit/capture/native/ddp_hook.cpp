// tracekit's native capture: DDP's own all-reduce, recorded without the GIL, and a writer thread.
//
// Over 600 lines because it is one translation unit: each source file including torch/extension.h
// takes ~40 s to compile, and the hook, the call and step records and the writer share one State.
//
// A Python comm hook costs every gradient bucket a GIL hand-off on gloo's completion thread (its
// `.then` continuation), measured at +2 to +16 % step time before recording anything. This hook
// does what DDP does without a comm hook (scale the bucket by 1 / group size, all-reduce, return the
// reduced buffer) and, in C++:
//   * measures the *local* bucket before reducing, in the same pass that scales it: its L2 norm,
//     summed over the step's buckets into this rank's gradient norm, and whether it holds a NaN or
//     inf (then the norm is not finite; an infinite norm is confirmed element-wise);
//   * numbers the all-reduce from the same per-group counter tracekit's Python wrappers use, so
//     DDP's buckets and the script's own collectives share one sequence per process group;
//   * records enter (before the call) and exit (when the work completed: the future's callback,
//     on gloo's thread; nothing else runs there) and whether it failed.
// tracekit's Python wrappers of ``torch.distributed`` calls record through ``begin_call`` and
// ``finish_call`` here too (point-to-point calls with a sequence per group, direction and peer), and
// ``close_step`` keeps each training step's record: plain CPython fast calls, a few hundred ns each.
// The writer thread (``start_writer``) formats the records as JSON lines of tracekit's spool streams
// and appends them to the files Python opened, beats, and samples scheduling lag; no Python thread
// wakes up while training runs. The lines' keys, their order and their JSON types come from
// ``tracekit_layout.h``, which the build generates from tracekit.conventions.STREAMS (the one stream
// schema): this file only fills a row's cells by field (``layout::steps::loss``); a field it leaves
// unset is written as null. Without it, Python drains the records at each spool flush. At exit and
// on SIGTERM (then in-flight calls too, marked interrupted) everything pending is written.
#include <torch/extension.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/comm.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>

#include "tracekit_layout.h"  // generated at build time: tracekit/capture/native/__init__.py

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

struct Record {
  std::string group;
  std::string op = "all_reduce";
  std::string source = "ddp";
  int64_t seq = 0;
  int64_t enter_ns = 0;
  int64_t exit_ns = 0;
  int64_t step = 0;
  int64_t bytes = 0;
  int64_t peer = -1;  // point-to-point calls: the other rank; -1 otherwise
  std::optional<std::string> dtype;
  bool async_op = true;
  bool ok = true;
  std::optional<bool> nonfinite;  // checked buckets only
  std::string error;
  // a bucket all-reduce's future while in flight: its exit is recorded by a callback that runs after the
  // future's waiters wake, so at exit `settle` waits for the callbacks of completed ones (null for calls)
  c10::intrusive_ptr<c10::ivalue::Future> future;
};

// One ``steps`` record as close_step took it; formatted when drained.
struct StepRow {
  int64_t step, start_ns, end_ns;
  std::optional<double> loss, grad_norm;
  std::optional<bool> nonfinite;
};

// Process-wide state shared by every hooked model and by Python.
struct State {
  std::mutex mu;
  std::unordered_map<std::string, int64_t> seq;  // next sequence number per process group
  std::map<int64_t, Record> inflight;            // token -> record, oldest token first
  std::vector<Record> done;                      // completed, not yet drained
  int64_t next_token = 0;
  std::atomic<int64_t> step{0};
  std::atomic<int> nonfinite{-1};  // since the last take: -1 no bucket checked, 0 all finite, 1 some not
  std::atomic<int64_t> rank{-1};
  std::atomic<int64_t> world{-1};
  double grad_sqsum = 0.0;         // squared L2 norm of the local buckets measured since the last take
  bool grad_any = false;
  std::vector<StepRow> steps;      // closed by close_step, formatted when drained (off the training thread)
};

State& state() {
  static State* s = new State();  // never destroyed: gloo's threads may complete work at exit
  return *s;
}

int64_t next_seq(const std::string& group) {
  auto& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.seq[group]++;
}

// torch's name of a dtype ("float32"), as tracekit's Python wrappers write it.
std::string dtype_name(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kLong: return "int64";
    case at::kInt: return "int32";
    case at::kShort: return "int16";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    case at::kBool: return "bool";
    case at::kComplexFloat: return "complex64";
    case at::kComplexDouble: return "complex128";
    default: return c10::toString(type);
  }
}

void json_string(std::string& out, const std::string& value) {
  out += '"';
  for (unsigned char c : value) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

// One cell of a record: a value, or null when unset.
struct Cell {
  enum Kind : uint8_t { kNull, kInt, kFloat, kBool, kText } kind = kNull;
  int64_t i = 0;
  double f = 0.0;
  bool b = false;
  const std::string* text = nullptr;  // borrowed: the row is formatted before its source goes away
};

// One record of a stream of N fields: its cells by field (``layout::steps::loss``), formatted by
// json_row as one JSON line with the keys, order and types of the generated layout. An unset cell,
// or an empty optional, is null.
template <int N>
struct Row {
  Cell cells[N];
  void set(int field, int64_t value) {
    cells[field].kind = Cell::kInt;
    cells[field].i = value;
  }
  void set(int field, double value) {
    cells[field].kind = Cell::kFloat;
    cells[field].f = value;
  }
  void set(int field, bool value) {
    cells[field].kind = Cell::kBool;
    cells[field].b = value;
  }
  void set(int field, const std::string& value) {
    cells[field].kind = Cell::kText;
    cells[field].text = &value;
  }
  template <typename T>
  void set(int field, const std::optional<T>& value) {
    if (value) {
      set(field, *value);
    }
  }
};

// A cell as the JSON type its field declares (an integer field holding a float is truncated, a
// non-finite float is null, a text field holding no text is null).
void json_cell(std::string& out, const Cell& c, layout::Type type) {
  char buf[32];
  switch (type) {
    case layout::Type::kInt:
      if (c.kind == Cell::kInt || c.kind == Cell::kBool) {
        std::snprintf(buf, sizeof buf, "%" PRId64, c.kind == Cell::kInt ? c.i : static_cast<int64_t>(c.b));
        out += buf;
        return;
      }
      if (c.kind == Cell::kFloat && std::isfinite(c.f)) {
        std::snprintf(buf, sizeof buf, "%" PRId64, static_cast<int64_t>(c.f));
        out += buf;
        return;
      }
      break;
    case layout::Type::kFloat:
      if (c.kind == Cell::kFloat || c.kind == Cell::kInt) {
        const double v = c.kind == Cell::kFloat ? c.f : static_cast<double>(c.i);
        if (std::isfinite(v)) {
          std::snprintf(buf, sizeof buf, "%.17g", v);
          out += buf;
          return;
        }
      }
      break;
    case layout::Type::kBool:
      if (c.kind == Cell::kBool || c.kind == Cell::kInt) {
        out += (c.kind == Cell::kBool ? c.b : c.i != 0) ? "true" : "false";
        return;
      }
      break;
    case layout::Type::kString:
      if (c.kind == Cell::kText) {
        json_string(out, *c.text);
        return;
      }
      break;
  }
  out += "null";
}

template <int N>
void json_row(std::string& out, const layout::Field (&fields)[N], const Row<N>& row) {
  out += '{';
  for (int k = 0; k < N; ++k) {
    if (k > 0) {
      out += ',';
    }
    out += fields[k].key;
    json_cell(out, row.cells[k], fields[k].type);
  }
  out += "}\n";
}

// One line of the ``collectives`` stream (the fields tracekit's Python wrappers write for a call).
void json_line(std::string& out, const Record& r, int64_t rank, int64_t world) {
  namespace F = layout::collectives;
  Row<F::kCount> row;
  row.set(F::rank, rank);
  row.set(F::world_size, world);
  row.set(F::process_group, r.group);
  row.set(F::seq, r.seq);
  row.set(F::op, r.op);
  row.set(F::bytes, r.bytes);
  row.set(F::dtype, r.dtype);
  row.set(F::enter_ns, r.enter_ns);
  row.set(F::exit_ns, r.exit_ns);
  row.set(F::step, r.step);
  row.set(F::ok, r.ok);
  if (r.peer >= 0) {
    row.set(F::peer, r.peer);
  }
  row.set(F::async_op, r.async_op);
  row.set(F::source, r.source);
  row.set(F::nonfinite, r.nonfinite);
  if (!r.error.empty()) {
    row.set(F::error, r.error);
  }
  json_row(out, F::kFields, row);
}

// True when `buffer` is the usual DDP bucket: contiguous float32 on the CPU.
bool plain_float_bucket(const at::Tensor& buffer) {
  return buffer.is_cpu() && buffer.scalar_type() == at::kFloat && buffer.is_contiguous();
}

// The L2 norm of a plain float bucket, which is averaged in the same pass: multiplied by
// float(1 / divisor), as DDP's own path without a comm hook scales gradients while copying them into the
// bucket, so the result is bit-identical to uninstrumented DDP. A comm hook gets the bucket unscaled, so
// this pass is the one thing capture adds to the training thread per bucket: it reads and writes the
// bucket once, with 16 independent double accumulators (one would make the pass latency-bound on its
// additions, ~2x slower) and, where the CPU has them, AVX2 and FMA (target_clones picks at load time).
// Measured on a 215k-float model: 20 us per step, against 44 us for one vectorised accumulator with SSE2.
// at::norm and div_ would each pay the dispatcher and a TensorIterator and a pass over memory. NaN and
// inf propagate into the norm as in at::norm.
__attribute__((target_clones("arch=x86-64-v3", "default")))
double norm_then_average(float* data, int64_t n, int64_t divisor) {
  const float scale = static_cast<float>(1.0 / static_cast<double>(divisor));
  constexpr int kLanes = 16;
  double acc[kLanes] = {0.0};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) {
      const float v = data[i + j];
      acc[j] += static_cast<double>(v) * static_cast<double>(v);
      data[i + j] = v * scale;
    }
  }
  double total = 0.0;
  for (; i < n; ++i) {
    const float v = data[i];
    total += static_cast<double>(v) * static_cast<double>(v);
    data[i] = v * scale;
  }
  for (double a : acc) {
    total += a;
  }
  return std::sqrt(total);
}

// Test hook: TRACEKIT_NATIVE_CALLBACK_DELAY_MS holds every bucket's exit callback back that long, as a
// descheduled gloo thread would (the exit-time `settle` must still see the bucket). Read once.
int64_t callback_delay_ms() {
  static const int64_t delay = [] {
    const char* value = std::getenv("TRACEKIT_NATIVE_CALLBACK_DELAY_MS");
    return value != nullptr ? std::max<int64_t>(0, std::atoll(value)) : 0;
  }();
  return delay;
}

class RecordingAllReduceHook
    : public c10d::CppCommHookInterface<c10::intrusive_ptr<c10d::ProcessGroup>> {
 public:
  RecordingAllReduceHook(const c10::intrusive_ptr<c10d::ProcessGroup>& group, std::string name,
                         bool check_finite)
      : c10d::CppCommHookInterface<c10::intrusive_ptr<c10d::ProcessGroup>>(group),
        name_(std::move(name)),
        check_finite_(check_finite) {}

  c10::intrusive_ptr<c10::ivalue::Future> runHook(c10d::GradBucket& bucket) override {
    at::Tensor& buffer = bucket.getBufferRef();
    Record record;
    record.enter_ns = now_ns();
    const int64_t size = state_->getSize();
    double sqnorm = 0.0;
    bool measured = false;
    bool averaged = false;
    if (check_finite_ && at::isFloatingType(buffer.scalar_type())) {
      double norm;
      if (plain_float_bucket(buffer)) {
        norm = norm_then_average(buffer.data_ptr<float>(), buffer.numel(), size);
        averaged = true;
      } else {
        norm = buffer.norm().item<double>();
      }
      bool nonfinite = !std::isfinite(norm);
      if (nonfinite && !std::isnan(norm)) {  // inf: a real inf, or squares of huge values overflowed
        // (dividing by the group size has not changed which elements are finite)
        nonfinite = !buffer.isfinite().all().item<bool>();
      }
      record.nonfinite = nonfinite;
      sqnorm = norm * norm;
      measured = true;
      int expected = -1;
      auto& flag = state().nonfinite;
      if (nonfinite) {
        flag.store(1);
      } else {
        flag.compare_exchange_strong(expected, 0);
      }
    }
    record.group = name_;
    record.bytes = static_cast<int64_t>(buffer.numel()) * static_cast<int64_t>(buffer.element_size());
    record.dtype = dtype_name(buffer.scalar_type());
    record.step = state().step.load();
    int64_t token;
    {
      auto& s = state();
      std::lock_guard<std::mutex> lock(s.mu);
      record.seq = s.seq[name_]++;
      token = s.next_token++;
      if (measured) {
        s.grad_sqsum += sqnorm;
        s.grad_any = true;
      }
      s.inflight.emplace(token, record);
    }
    if (!averaged) {
      buffer.mul_(1.0 / static_cast<double>(size));  // average, as DDP without a comm hook scales
    }
    std::vector<at::Tensor> tensors = {buffer};
    c10::intrusive_ptr<c10::ivalue::Future> future;
    try {
      future = state_->allreduce(tensors)->getFuture();
    } catch (const std::exception& e) {
      finish(token, false, e.what());
      throw;
    }
    {
      auto& s = state();
      std::lock_guard<std::mutex> lock(s.mu);
      auto it = s.inflight.find(token);
      if (it != s.inflight.end()) {
        it->second.future = future;
      }
    }
    // DDP gets the all-reduce's own future, as without a comm hook; the exit is recorded by a callback
    // that runs on gloo's thread after the future's waiters are woken, so it is on no one's critical
    // path (a `then` continuation would chain a second future that DDP waits for)
    future->addCallback([token](c10::ivalue::Future& done) {
      if (callback_delay_ms() > 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(callback_delay_ms()));
      }
      if (done.hasError()) {
        finish(token, false, done.tryRetrieveErrorMessage());
      } else {
        finish(token, true, "");
      }
    });
    return future;
  }

  static void finish(int64_t token, bool ok, const std::string& error) {
    int64_t exit = now_ns();
    auto& s = state();
    std::lock_guard<std::mutex> lock(s.mu);
    auto it = s.inflight.find(token);
    if (it == s.inflight.end()) {
      return;  // already written as interrupted
    }
    Record record = std::move(it->second);
    s.inflight.erase(it);
    record.future.reset();
    record.exit_ns = exit;
    record.ok = ok;
    record.error = error.substr(0, 300);
    s.done.push_back(std::move(record));
  }

 private:
  std::string name_;
  bool check_finite_;
};

void register_hook(py::object reducer, const c10::intrusive_ptr<c10d::ProcessGroup>& group,
                   const std::string& name, bool check_finite) {
  auto& r = reducer.cast<c10d::Reducer&>();
  r.register_comm_hook(std::make_unique<RecordingAllReduceHook>(group, name, check_finite));
}

// Completed records (and, with `interrupted`, the in-flight ones, marked failed with that reason),
// taken out of the state.
std::vector<Record> take_done(const std::string& interrupted) {
  std::vector<Record> out;
  auto& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  out.swap(s.done);
  if (!interrupted.empty()) {
    int64_t now = now_ns();
    for (auto& [token, record] : s.inflight) {
      record.exit_ns = now;
      record.ok = false;
      record.error = interrupted;
      record.future.reset();
      out.push_back(std::move(record));
    }
    s.inflight.clear();
  }
  return out;
}

std::string format_records(const std::vector<Record>& records) {
  std::string text;
  text.reserve(records.size() * 330);
  int64_t rank = state().rank.load(), world = state().world.load();
  for (const auto& r : records) {
    json_line(text, r, rank, world);
  }
  return text;
}

// The step records close_step took, as JSON lines of the ``steps`` stream; how many.
std::string take_steps(int64_t& count) {
  std::vector<StepRow> rows;
  {
    auto& s = state();
    std::lock_guard<std::mutex> lock(s.mu);
    rows.swap(s.steps);
  }
  count = static_cast<int64_t>(rows.size());
  std::string text;
  const int64_t rank = state().rank.load();
  namespace F = layout::steps;
  for (const StepRow& r : rows) {
    Row<F::kCount> row;
    row.set(F::rank, rank);
    row.set(F::step, r.step);
    row.set(F::start_ns, r.start_ns);
    row.set(F::end_ns, r.end_ns);
    row.set(F::loss, r.loss);
    row.set(F::grad_norm, r.grad_norm);
    row.set(F::nonfinite, r.nonfinite);
    json_row(text, F::kFields, row);
  }
  return text;
}

py::str decoded(const std::string& text) {
  // "replace": an error message from the transport is not guaranteed to be valid UTF-8
  return py::reinterpret_steal<py::str>(
      PyUnicode_DecodeUTF8(text.data(), static_cast<Py_ssize_t>(text.size()), "replace"));
}

// Completed records (and, with `interrupted`, the in-flight ones) as (JSON lines, how many).
py::tuple drain(const std::string& interrupted) {
  std::vector<Record> out = take_done(interrupted);
  return py::make_tuple(decoded(format_records(out)), static_cast<int64_t>(out.size()));
}

// Wait, up to `timeout_s`, until no bucket all-reduce is left whose future completed but whose callback
// (which records the exit) has not run yet: the training thread wakes when the future completes and may
// reach exit before gloo's thread runs the callback, so the last flush would miss that bucket (seen
// under load: one bucket of the last step absent). Returns how many were still pending at the timeout.
int64_t settle(double timeout_s) {
  py::gil_scoped_release release;  // the callbacks take no GIL, but let other Python threads run
  auto& s = state();
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::nanoseconds(static_cast<int64_t>(timeout_s * 1e9));
  for (;;) {
    int64_t pending = 0;
    {
      std::lock_guard<std::mutex> lock(s.mu);
      for (const auto& [token, record] : s.inflight) {
        pending += record.future && record.future->completed() ? 1 : 0;
      }
    }
    if (pending == 0 || std::chrono::steady_clock::now() >= deadline) {
      return pending;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

// The oldest in-flight call or bucket all-reduce as (group, seq, enter_ns, op), or None.
py::object oldest_inflight() {
  auto& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.inflight.empty()) {
    return py::none();
  }
  const Record& r = s.inflight.begin()->second;
  return py::make_tuple(r.group, r.seq, r.enter_ns, r.op);
}

// Close a training step: what the hooked buckets measured since the last call, as (any bucket held a
// NaN or inf: None when no bucket was checked, squared L2 norm of the local buckets: None when none was
// measured); buckets from now on belong to `next_step`. One call per step from the training thread.
struct StepTake {
  int flag;    // -1 no bucket checked, 0 all finite, 1 some not
  bool any;    // some bucket's norm was measured
  double sum;  // their squared L2 norms
  PyObject* as_tuple() const {
    PyObject* nonfinite = flag < 0 ? Py_None : (flag == 1 ? Py_True : Py_False);
    Py_INCREF(nonfinite);
    PyObject* sqsum = any ? PyFloat_FromDouble(sum) : (Py_INCREF(Py_None), Py_None);
    PyObject* tuple = PyTuple_New(2);
    PyTuple_SET_ITEM(tuple, 0, nonfinite);
    PyTuple_SET_ITEM(tuple, 1, sqsum);
    return tuple;
  }
};

// What the buckets measured since the last take; the buckets from now on belong to `next_step`.
StepTake take_step(int64_t next_step) {
  auto& s = state();
  StepTake take{s.nonfinite.exchange(-1), false, 0.0};
  std::lock_guard<std::mutex> lock(s.mu);
  std::swap(take.any, s.grad_any);
  std::swap(take.sum, s.grad_sqsum);
  s.step.store(next_step);
  return take;
}

py::object end_step(int64_t next_step) {
  return py::reinterpret_steal<py::object>(take_step(next_step).as_tuple());
}

// Bytes and dtype (the first tensor's) of a call's payload: a tensor, a list or tuple of them, or None.
void add_payload(PyObject* payload, Record& record) {
  if (THPVariable_Check(payload)) {
    const at::Tensor& tensor = THPVariable_Unpack(payload);
    record.bytes += static_cast<int64_t>(tensor.numel()) * static_cast<int64_t>(tensor.element_size());
    if (!record.dtype) {
      record.dtype = dtype_name(tensor.scalar_type());
    }
  } else if (PyList_Check(payload) || PyTuple_Check(payload)) {
    PyObject* items = PySequence_Fast(payload, "");
    if (items == nullptr) {
      PyErr_Clear();
      return;
    }
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(items);
    for (Py_ssize_t i = 0; i < n; ++i) {
      add_payload(PySequence_Fast_GET_ITEM(items, i), record);
    }
    Py_DECREF(items);
  }
}

// --- the hot entry points, as plain CPython fast calls --------------------------------------------
// These run on the training thread every step; pybind11's dispatcher (overload resolution, type
// casters) costs more than the work, measured at ~3 us a call with cold caches mid-step.

bool utf8(PyObject* value, std::string& out) {
  Py_ssize_t size = 0;
  const char* text = PyUnicode_AsUTF8AndSize(value, &size);
  if (text == nullptr) {
    return false;
  }
  out.assign(text, static_cast<size_t>(size));
  return true;
}

PyObject* bad_args(const char* what) {
  PyErr_SetString(PyExc_TypeError, what);
  return nullptr;
}

// begin_call(op, group, payload, async_op, source, peer=None) -> token: open the record of one call
// made through tracekit's Python wrappers (enter: now; step: the current one; seq: the group's next,
// or for a point-to-point call, given `peer` (-1: any source), the next of that group, direction and
// peer, so point-to-point traffic never shifts the group's collective sequence).
PyObject* begin_call(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs < 5 || nargs > 6) {
    return bad_args("begin_call(op, group, payload, async_op, source, peer=None)");
  }
  Record record;
  record.enter_ns = now_ns();
  if (!utf8(args[0], record.op) || !utf8(args[1], record.group) || !utf8(args[4], record.source)) {
    return nullptr;
  }
  add_payload(args[2], record);
  record.async_op = PyObject_IsTrue(args[3]) == 1;
  std::string key = record.group;
  if (nargs == 6 && args[5] != Py_None) {
    record.peer = PyLong_AsLongLong(args[5]);
    if (record.peer == -1 && PyErr_Occurred()) {
      return nullptr;
    }
    const bool sends = record.op == "send" || record.op == "isend";
    key += sends ? "\x1fsend\x1f" : "\x1frecv\x1f";
    key += record.peer >= 0 ? std::to_string(record.peer) : std::string("any");
    record.peer = std::max<int64_t>(record.peer, -1);
  }
  auto& s = state();
  record.step = s.step.load();
  int64_t token;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    record.seq = s.seq[key]++;
    token = s.next_token++;
    s.inflight.emplace(token, std::move(record));
  }
  return PyLong_FromLongLong(token);
}

// finish_call(token, ok, error="")
PyObject* finish_call(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs < 2 || nargs > 3) {
    return bad_args("finish_call(token, ok, error='')");
  }
  const int64_t token = PyLong_AsLongLong(args[0]);
  if (token == -1 && PyErr_Occurred()) {
    return nullptr;
  }
  std::string error;
  if (nargs == 3 && args[2] != Py_None && !utf8(args[2], error)) {
    return nullptr;
  }
  RecordingAllReduceHook::finish(token, PyObject_IsTrue(args[1]) == 1, error);
  Py_RETURN_NONE;
}

// close_step(step, start_ns, end_ns, loss, nonfinite): close a training step and keep its ``steps``
// record (formatted when drained, off this thread), for the common case: the hooked buckets measured
// the gradient norm, and the loss is a float or a one-element CPU tensor. Takes what the buckets
// measured since the last call, as end_step does; the buckets from now on belong to step + 1. Returns
// None when the record was kept, else end_step's (nonfinite, squared norm) for Python to write the
// record itself (no bucket was measured: the norm comes from the optimizer; a loss on a GPU).
PyObject* close_step(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 5) {
    return bad_args("close_step(step, start_ns, end_ns, loss, nonfinite)");
  }
  StepRow row;
  row.step = PyLong_AsLongLong(args[0]);
  row.start_ns = PyLong_AsLongLong(args[1]);
  row.end_ns = PyLong_AsLongLong(args[2]);
  if (PyErr_Occurred()) {
    return nullptr;
  }
  PyObject* loss = args[3];
  bool usable = true;
  if (THPVariable_Check(loss)) {
    const at::Tensor& tensor = THPVariable_Unpack(loss);
    if (tensor.is_cpu() && tensor.numel() == 1 && tensor.scalar_type() == at::kFloat) {
      row.loss = static_cast<double>(*tensor.data_ptr<float>());
    } else if (tensor.is_cpu() && tensor.numel() == 1 && tensor.scalar_type() == at::kDouble) {
      row.loss = *tensor.data_ptr<double>();
    } else {
      usable = false;
    }
  } else if (PyFloat_Check(loss)) {
    row.loss = PyFloat_AS_DOUBLE(loss);
  } else if (loss != Py_None) {
    usable = false;
  }
  if (args[4] != Py_None) {
    row.nonfinite = PyObject_IsTrue(args[4]) == 1;
  }
  const StepTake take = take_step(row.step + 1);
  if (!take.any || !usable) {
    return take.as_tuple();
  }
  if (take.flag >= 0) {
    row.nonfinite = row.nonfinite.value_or(false) || take.flag == 1;
  } else if (!row.nonfinite && row.loss) {
    row.nonfinite = !std::isfinite(*row.loss);
  }
  if (std::isfinite(take.sum)) {
    row.grad_norm = std::sqrt(take.sum);
  }
  auto& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.steps.push_back(row);
  Py_RETURN_NONE;
}

// The step records close_step kept, as (JSON lines, how many).
py::tuple drain_steps() {
  int64_t count = 0;
  std::string text = take_steps(count);
  return py::make_tuple(decoded(text), count);
}

int64_t last_seq_locked(const std::string& group) {
  auto& s = state();
  auto it = s.seq.find(group);
  return it == s.seq.end() ? -1 : it->second - 1;
}

int64_t last_seq(const std::string& group) {
  std::lock_guard<std::mutex> lock(state().mu);
  return last_seq_locked(group);
}

// --- the writer: one native thread that samples scheduling lag, beats and writes -------------------
// With it, a rank's capture needs no Python thread waking up: it wakes every ~tick (jittered 0.5x to
// 1.5x, so never phase-locked to a periodic stall) and keeps the worst lateness of its wake-ups (a
// process starved of CPU wakes late; a busy one does not), writes a heartbeat every `beat`, and every
// `flush` appends the completed calls, bucket all-reduces, steps and heartbeats to the spool files
// Python opened (their headers and footers stay Python's). A native thread's wake-up costs about half
// a Python thread's (~60 vs ~120 us of CPU on a VM), and no GIL hand-off interrupts the training thread.

enum { kCollectives = 0, kSteps = 1, kHeartbeats = 2, kStreams = 3 };

struct Writer {
  std::mutex mu;             // guards everything below, and one writer of the files at a time
  std::condition_variable cv;
  std::thread* thread = nullptr;  // leaked in a forked child (the thread is not there)
  bool stop = false;
  int fds[kStreams] = {-1, -1, -1};
  int64_t written[kStreams] = {0, 0, 0};  // records written since Python last asked
  int64_t dropped[kStreams] = {0, 0, 0};
  std::string error[kStreams];
  std::string beats;             // heartbeats not yet written
  int64_t beats_count = 0;
  int64_t worst_late_ns = 0;     // since the last beat
  int64_t worst_step = -1;       // the step in progress at that wake-up
  int64_t tick_ns = 100000000, beat_ns = 500000000, flush_ns = 200000000;
};

Writer& writer() {
  static Writer* w = new Writer();
  return *w;
}

// Append `text` (`count` records) to stream `i`'s file; a failure drops them and is reported to Python.
void write_locked(Writer& w, int i, const std::string& text, int64_t count) {
  if (count == 0) {
    return;
  }
  if (w.fds[i] < 0) {
    w.dropped[i] += count;
    return;
  }
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(w.fds[i], text.data() + done, text.size() - done);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      // a short write may have landed some whole records before the error
      int64_t landed = 0;
      for (size_t k = 0; k < done; ++k) {
        landed += text[k] == '\n';
      }
      w.written[i] += landed;
      w.dropped[i] += count - landed;
      w.error[i] = std::strerror(errno);
      ::close(w.fds[i]);
      w.fds[i] = -1;
      return;
    }
    done += static_cast<size_t>(n);
  }
  w.written[i] += count;
}

void beat_locked(Writer& w, const char* what) {
  auto& s = state();
  int64_t step, last, since = 0, seq = 0;
  std::string op;
  bool inflight;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    step = s.step.load();
    last = last_seq_locked("default");
    inflight = !s.inflight.empty();
    if (inflight) {
      const Record& r = s.inflight.begin()->second;
      op = r.op;
      seq = r.seq;
      since = r.enter_ns;
    }
  }
  namespace F = layout::heartbeats;
  const std::string state_name(what);
  Row<F::kCount> row;
  row.set(F::rank, s.rank.load());
  row.set(F::ts_ns, now_ns());
  row.set(F::step, step);
  row.set(F::last_seq, last);
  if (inflight) {
    row.set(F::inflight_op, op);
    row.set(F::inflight_seq, seq);
    row.set(F::inflight_since_ns, since);
  }
  row.set(F::state, state_name);
  row.set(F::sched_lag_ns, w.worst_late_ns);
  if (w.worst_step >= 0) {
    row.set(F::lag_step, w.worst_step);
  }
  json_row(w.beats, F::kFields, row);
  w.beats_count += 1;
  w.worst_late_ns = 0;
  w.worst_step = -1;
}

// Write everything pending (with `interrupted`: the in-flight calls too, marked failed).
void flush_locked(Writer& w, const std::string& interrupted) {
  std::vector<Record> done = take_done(interrupted);
  write_locked(w, kCollectives, format_records(done), static_cast<int64_t>(done.size()));
  int64_t count = 0;
  std::string steps = take_steps(count);
  write_locked(w, kSteps, steps, count);
  write_locked(w, kHeartbeats, w.beats, w.beats_count);
  w.beats.clear();
  w.beats_count = 0;
}

void run_writer() {
  pthread_setname_np(pthread_self(), "tracekit-writer");
  Writer& w = writer();
  using clock = std::chrono::steady_clock;
  using ns = std::chrono::nanoseconds;
  uint64_t rng = static_cast<uint64_t>(now_ns()) | 1;
  auto uniform = [&rng]() {  // xorshift64: 0 .. 1
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return static_cast<double>(rng >> 11) / 9007199254740992.0;
  };
  // Every wake-up is due at a random phase. A wake-up due a fixed time after the last one is
  // phase-locked to a periodic stall: after a stop/continue cycle wakes the thread (late) at the
  // continue, a flush due exactly 200 ms later falls on a continue again and never sees the stop.
  // So the flush comes a random 0 .. tick/2 before its interval is up, and ticks are 0.5x .. 1.5x.
  auto flush_due = [&w, &uniform](clock::time_point from) {
    return from + ns(w.flush_ns) - ns(static_cast<int64_t>(uniform() * 0.5 * static_cast<double>(std::min(w.tick_ns, w.flush_ns))));
  };
  auto next_beat = clock::now();
  auto next_flush = flush_due(clock::now());
  std::unique_lock<std::mutex> lock(w.mu);
  while (!w.stop) {
    auto deadline = clock::now() + ns(static_cast<int64_t>((0.5 + uniform()) * static_cast<double>(w.tick_ns)));
    if (next_flush < deadline) {
      deadline = next_flush;
    }
    if (w.cv.wait_until(lock, deadline, [&w] { return w.stop; })) {
      break;
    }
    const auto now = clock::now();
    const int64_t late = std::chrono::duration_cast<ns>(now - deadline).count();
    if (late > w.worst_late_ns || w.worst_step < 0) {
      w.worst_late_ns = std::max<int64_t>(late, w.worst_late_ns);
      w.worst_step = state().step.load();
    }
    if (now >= next_beat) {
      beat_locked(w, "alive");
      next_beat = now + ns(w.beat_ns);
    }
    if (now >= next_flush) {
      flush_locked(w, "");
      next_flush = flush_due(now);
    }
  }
}

// start_writer(collectives_fd, steps_fd, heartbeats_fd, tick_s, beat_s, flush_s): the writer owns
// these (duplicated) descriptors until stop_writer. A no-op when it runs already.
void start_writer(int collectives_fd, int steps_fd, int heartbeats_fd, double tick_s, double beat_s,
                  double flush_s) {
  Writer& w = writer();
  std::lock_guard<std::mutex> lock(w.mu);
  if (w.thread != nullptr) {
    return;
  }
  const int fds[kStreams] = {collectives_fd, steps_fd, heartbeats_fd};
  for (int i = 0; i < kStreams; ++i) {
    w.fds[i] = fds[i] >= 0 ? ::dup(fds[i]) : -1;
  }
  w.tick_ns = static_cast<int64_t>(tick_s * 1e9);
  w.beat_ns = static_cast<int64_t>(beat_s * 1e9);
  w.flush_ns = static_cast<int64_t>(flush_s * 1e9);
  w.stop = false;
  w.worst_late_ns = 0;
  w.worst_step = -1;
  w.thread = new std::thread(run_writer);
}

// Records written and dropped per stream since the last call, and the first write error of each.
struct Counts {
  int64_t written[kStreams], dropped[kStreams];
  std::string error[kStreams];
};

Counts take_counts_locked(Writer& w) {
  Counts c;
  for (int i = 0; i < kStreams; ++i) {
    c.written[i] = w.written[i];
    c.dropped[i] = w.dropped[i];
    c.error[i] = w.error[i];
    w.written[i] = w.dropped[i] = 0;
  }
  return c;
}

// ((written, dropped, error) for collectives, steps, heartbeats)
py::tuple as_tuple(const Counts& c) {
  py::tuple out(static_cast<size_t>(kStreams));
  for (int i = 0; i < kStreams; ++i) {
    out[i] = py::make_tuple(c.written[i], c.dropped[i], c.error[i]);
  }
  return out;
}

// Write everything pending now, from the calling thread (an explicit flush; SIGTERM, with
// `interrupted`: the in-flight calls too); returns the counts. The GIL is released throughout, and
// the writer's lock is never held while taking the GIL back (a thread holding the GIL may be forking,
// and the fork handler takes that lock).
py::tuple flush_writer(const std::string& interrupted) {
  Writer& w = writer();
  Counts counts;
  {
    py::gil_scoped_release release;  // formatting and writing touch no Python object
    std::lock_guard<std::mutex> lock(w.mu);
    flush_locked(w, interrupted);
    counts = take_counts_locked(w);
  }
  return as_tuple(counts);
}

// Append a heartbeat in state `what` (e.g. "sigterm") to be written at the next flush.
void beat(const std::string& what) {
  Writer& w = writer();
  py::gil_scoped_release release;
  std::lock_guard<std::mutex> lock(w.mu);
  beat_locked(w, what.c_str());
}

// Stop the writer: join it, write everything pending, close its descriptors; returns the counts.
py::tuple stop_writer() {
  Writer& w = writer();
  Counts counts;
  {
    py::gil_scoped_release release;
    std::thread* thread;
    {
      std::lock_guard<std::mutex> lock(w.mu);
      thread = w.thread;
      w.thread = nullptr;
      w.stop = true;
    }
    w.cv.notify_all();
    if (thread != nullptr) {
      thread->join();
      delete thread;
    }
    std::lock_guard<std::mutex> lock(w.mu);
    flush_locked(w, "");
    for (int& fd : w.fds) {
      if (fd >= 0) {
        ::close(fd);
        fd = -1;
      }
    }
    counts = take_counts_locked(w);
  }
  return as_tuple(counts);
}

bool writer_running() {
  Writer& w = writer();
  std::lock_guard<std::mutex> lock(w.mu);
  return w.thread != nullptr;
}

// fork() keeps only the calling thread. The state's lock (held for moments, never across I/O) is held
// across it, so the child never inherits it held by a thread it does not have (a DataLoader worker
// closing its spool at exit would wait for it forever). The writer's lock may be held across a slow
// write, so a fork does not wait for it: the child, which has no writer thread, starts with a fresh,
// stopped Writer instead (joining the parent's thread there would never return).
void before_fork() {
  state().mu.lock();
}

void after_fork_in_parent() {
  state().mu.unlock();
}

void after_fork_in_child() {
  auto& s = state();
  // the parent's completed, in-flight and step records are the parent's to write: written here too,
  // they would land twice
  s.done.clear();
  for (auto& [token, record] : s.inflight) {
    (void)record.future.release();  // leaked, not dropped: the parent's gloo threads own them, not here
  }
  s.inflight.clear();
  s.steps.clear();
  s.mu.unlock();
  new (&writer()) Writer();  // the parent's Writer (its thread, its descriptors) is abandoned, not destroyed
}

PyMethodDef kFastCalls[] = {
    {"begin_call", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(begin_call)), METH_FASTCALL,
     "begin_call(op, group, payload, async_op, source, peer=None) -> token"},
    {"finish_call", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(finish_call)), METH_FASTCALL,
     "finish_call(token, ok, error='')"},
    {"close_step", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(close_step)), METH_FASTCALL,
     "close_step(step, start_ns, end_ns, loss, nonfinite) -> None | (nonfinite, squared norm)"},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "tracekit's native capture: the DDP all-reduce hook, call and step records, the writer thread";
  m.def("register_hook", &register_hook, py::arg("reducer"), py::arg("group"), py::arg("name"),
        py::arg("check_finite") = true);
  m.def("next_seq", &next_seq, py::arg("group"));
  m.def("last_seq", &last_seq, py::arg("group"));
  m.def("set_step", [](int64_t step) { state().step.store(step); }, py::arg("step"));
  m.def(
      "set_identity",
      [](int64_t rank, int64_t world) {
        state().rank.store(rank);
        state().world.store(world);
      },
      py::arg("rank"), py::arg("world_size"));
  m.def("end_step", &end_step, py::arg("next_step"));
  m.def("drain_steps", &drain_steps);
  m.def("drain", &drain, py::arg("interrupted") = "");
  m.def("oldest_inflight", &oldest_inflight);
  m.def("settle", &settle, py::arg("timeout_s"));
  m.def("start_writer", &start_writer, py::arg("collectives_fd"), py::arg("steps_fd"), py::arg("heartbeats_fd"),
        py::arg("tick_s"), py::arg("beat_s"), py::arg("flush_s"));
  m.def("flush_writer", &flush_writer, py::arg("interrupted") = "");
  m.def("stop_writer", &stop_writer);
  m.def("writer_running", &writer_running);
  m.def("beat", &beat, py::arg("state"));
  for (PyMethodDef* def = kFastCalls; def->ml_name != nullptr; ++def) {
    m.add_object(def->ml_name, py::reinterpret_steal<py::object>(PyCFunction_NewEx(def, nullptr, m.attr("__name__").ptr())));
  }
  pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child);
}
