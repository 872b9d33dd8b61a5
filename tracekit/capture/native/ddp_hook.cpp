// tracekit's native DDP communication hook: DDP's own all-reduce, recorded without the GIL.
//
// A Python comm hook costs every gradient bucket a GIL hand-off on gloo's completion thread (its
// `.then` continuation), measured at +2 to +16 % step time before recording anything. This hook
// does what PyTorch's built-in ALLREDUCE hook does (divide by the group size, all-reduce, return
// the reduced buffer) and, in C++:
//   * measures the *local* bucket before reducing, in the same pass that divides it by the group
//     size: its L2 norm, summed over the step's buckets into this rank's gradient norm, and whether
//     it holds a NaN or inf (then the norm is not finite; an infinite norm is confirmed element-wise);
//   * numbers the all-reduce from the same per-group counter tracekit's Python wrappers use, so
//     DDP's buckets and the script's own collectives share one sequence per process group;
//   * records enter (before the call) and exit (when the work completed: the future's callback,
//     on gloo's thread; nothing else runs there) and whether it failed.
// Records leave as JSON lines of tracekit's ``collectives`` stream, formatted here, so Python builds
// no dict and encodes no JSON per bucket. tracekit's Python wrappers of ``torch.distributed`` calls
// (other than point-to-point) record through ``begin_call``/``finish_call`` here too: two C++ calls
// instead of a Python record per call, the same sequence counter, the same in-flight table.
// Python drains the completed records at every spool flush (the flusher thread, off the training
// thread), at exit, and on SIGTERM (then in-flight ones too, marked interrupted).
#include <torch/extension.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/comm.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>
#include <pybind11/stl.h>

#include <atomic>
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
  std::optional<std::string> dtype;
  bool async_op = true;
  bool ok = true;
  std::optional<bool> nonfinite;  // checked buckets only
  std::string error;
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
  std::string steps;               // ``steps`` records formatted by close_step, not yet drained
  int64_t steps_count = 0;
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

// One line of the ``collectives`` stream (the fields tracekit's Python wrappers write for a call).
void json_line(std::string& out, const Record& r, int64_t rank, int64_t world) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "{\"rank\":%" PRId64 ",\"world_size\":%" PRId64 ",\"process_group\":", rank, world);
  out += buf;
  json_string(out, r.group);
  std::snprintf(buf, sizeof buf, ",\"seq\":%" PRId64 ",\"op\":", r.seq);
  out += buf;
  json_string(out, r.op);
  std::snprintf(buf, sizeof buf, ",\"enter_ns\":%" PRId64 ",\"step\":%" PRId64 ",\"bytes\":%" PRId64 ",\"dtype\":",
                r.enter_ns, r.step, r.bytes);
  out += buf;
  if (r.dtype) {
    json_string(out, *r.dtype);
  } else {
    out += "null";
  }
  out += ",\"peer\":null";  // point-to-point calls are recorded in Python (sequences per peer)
  out += r.async_op ? ",\"async_op\":true,\"source\":" : ",\"async_op\":false,\"source\":";
  json_string(out, r.source);
  std::snprintf(buf, sizeof buf, ",\"nonfinite\":%s,\"exit_ns\":%" PRId64 ",\"ok\":%s",
                r.nonfinite ? (*r.nonfinite ? "true" : "false") : "null", r.exit_ns, r.ok ? "true" : "false");
  out += buf;
  if (!r.error.empty()) {
    out += ",\"error\":";
    json_string(out, r.error);
  }
  out += "}\n";
}

// True when `buffer` is the usual DDP bucket: contiguous float32 on the CPU.
bool plain_float_bucket(const at::Tensor& buffer) {
  return buffer.is_cpu() && buffer.scalar_type() == at::kFloat && buffer.is_contiguous();
}

// The L2 norm of a plain float bucket, which is divided by `divisor` in the same pass (the average
// DDP's all-reduce needs: x / divisor in float, as `div_` computes it, so the result is bit-identical).
// One vectorised loop with double accumulators reads and writes the bucket once: at::norm and div_
// would each pay the dispatcher and a TensorIterator and each make a pass over memory, more than the
// arithmetic on a bucket of a few hundred KB. NaN and inf propagate into the norm as in at::norm.
double norm_then_divide(at::Tensor& buffer, int64_t divisor) {
  float* data = buffer.data_ptr<float>();
  const int64_t n = buffer.numel();
  const float d = static_cast<float>(divisor);
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) {
    const float v = data[i];
    acc += static_cast<double>(v) * static_cast<double>(v);
    data[i] = v / d;
  }
  return std::sqrt(acc);
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
        norm = norm_then_divide(buffer, size);
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
      buffer.div_(size);  // what the built-in ALLREDUCE hook does: average
    }
    std::vector<at::Tensor> tensors = {buffer};
    c10::intrusive_ptr<c10::ivalue::Future> future;
    try {
      future = state_->allreduce(tensors)->getFuture();
    } catch (const std::exception& e) {
      finish(token, false, e.what());
      throw;
    }
    return future->then(
        [token](c10::ivalue::Future& done) -> c10::IValue {
          if (done.hasError()) {
            finish(token, false, done.tryRetrieveErrorMessage());
          } else {
            finish(token, true, "");
          }
          return done.value();  // rethrows the error, if any, to DDP
        },
        future->elementType());
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

// Completed records (and, with `interrupted`, the in-flight ones, marked failed with that reason) as
// (JSON lines, how many).
py::tuple drain(const std::string& interrupted) {
  std::vector<Record> out;
  {
    auto& s = state();
    std::lock_guard<std::mutex> lock(s.mu);
    out.swap(s.done);
    if (!interrupted.empty()) {
      int64_t now = now_ns();
      for (auto& [token, record] : s.inflight) {
        record.exit_ns = now;
        record.ok = false;
        record.error = interrupted;
        out.push_back(std::move(record));
      }
      s.inflight.clear();
    }
  }
  std::string text;
  text.reserve(out.size() * 330);
  int64_t rank = state().rank.load(), world = state().world.load();
  for (const auto& r : out) {
    json_line(text, r, rank, world);
  }
  // "replace": an error message from the transport is not guaranteed to be valid UTF-8
  auto lines = py::reinterpret_steal<py::str>(
      PyUnicode_DecodeUTF8(text.data(), static_cast<Py_ssize_t>(text.size()), "replace"));
  return py::make_tuple(lines, static_cast<int64_t>(out.size()));
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
  py::tuple as_tuple() const {
    return py::make_tuple(flag < 0 ? py::object(py::none()) : py::object(py::bool_(flag == 1)),
                          any ? py::object(py::float_(sum)) : py::object(py::none()));
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

py::tuple end_step(int64_t next_step) {
  return take_step(next_step).as_tuple();
}

// Bytes and dtype (the first tensor's) of a call's payload: a tensor, a list or tuple of them, or None.
void add_payload(py::handle payload, Record& record) {
  if (THPVariable_Check(payload.ptr())) {
    const at::Tensor& tensor = THPVariable_Unpack(payload.ptr());
    record.bytes += static_cast<int64_t>(tensor.numel()) * static_cast<int64_t>(tensor.element_size());
    if (!record.dtype) {
      record.dtype = dtype_name(tensor.scalar_type());
    }
  } else if (py::isinstance<py::list>(payload) || py::isinstance<py::tuple>(payload)) {
    for (py::handle item : payload) {
      add_payload(item, record);
    }
  }
}

// Open the record of one call (not point-to-point) made through tracekit's Python wrappers (enter: now;
// step: the current one; seq: the group's next); returns its token for finish_call.
int64_t begin_call(const std::string& op, const std::string& group, py::handle payload, bool async_op,
                   const std::string& source) {
  Record record;
  record.enter_ns = now_ns();
  record.op = op;
  record.group = group;
  add_payload(payload, record);
  record.async_op = async_op;
  record.source = source;
  auto& s = state();
  record.step = s.step.load();
  std::lock_guard<std::mutex> lock(s.mu);
  record.seq = s.seq[group]++;
  int64_t token = s.next_token++;
  s.inflight.emplace(token, std::move(record));
  return token;
}

void json_number(std::string& out, std::optional<double> value) {
  if (!value || !std::isfinite(*value)) {
    out += "null";
    return;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", *value);
  out += buf;
}

// Close a training step and format its ``steps`` record here, for the common case: the hooked buckets
// measured the gradient norm, and the loss is a float or a one-element CPU tensor. Takes what the
// buckets measured since the last call, as end_step does; the buckets from now on belong to step + 1.
// Returns None when the record was written, else end_step's (nonfinite, squared norm) for Python to
// write the record itself (no bucket was measured: the norm comes from the optimizer; a loss on a GPU).
py::object close_step(int64_t step, int64_t start_ns, int64_t end_ns, py::handle loss,
                      std::optional<bool> nonfinite) {
  std::optional<double> value;
  bool usable = true;
  if (THPVariable_Check(loss.ptr())) {
    const at::Tensor& tensor = THPVariable_Unpack(loss.ptr());
    if (tensor.is_cpu() && tensor.numel() == 1 && tensor.scalar_type() == at::kFloat) {
      value = static_cast<double>(*tensor.data_ptr<float>());
    } else if (tensor.is_cpu() && tensor.numel() == 1 && tensor.scalar_type() == at::kDouble) {
      value = *tensor.data_ptr<double>();
    } else {
      usable = false;
    }
  } else if (PyFloat_Check(loss.ptr())) {
    value = PyFloat_AS_DOUBLE(loss.ptr());
  } else if (!loss.is_none()) {
    usable = false;
  }
  const StepTake take = take_step(step + 1);
  if (!take.any || !usable) {
    return take.as_tuple();
  }
  if (take.flag >= 0) {
    nonfinite = nonfinite.value_or(false) || take.flag == 1;
  } else if (!nonfinite && value) {
    nonfinite = !std::isfinite(*value);
  }
  auto& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  char buf[160];
  std::snprintf(buf, sizeof buf, "{\"rank\":%" PRId64 ",\"step\":%" PRId64 ",\"start_ns\":%" PRId64 ",\"end_ns\":%" PRId64
                ",\"loss\":", s.rank.load(), step, start_ns, end_ns);
  s.steps += buf;
  json_number(s.steps, value);
  s.steps += ",\"grad_norm\":";
  json_number(s.steps, std::isfinite(take.sum) ? std::optional<double>(std::sqrt(take.sum)) : std::nullopt);
  s.steps += nonfinite ? (*nonfinite ? ",\"nonfinite\":true}\n" : ",\"nonfinite\":false}\n") : ",\"nonfinite\":null}\n";
  s.steps_count += 1;
  return py::none();
}

// The step records close_step formatted, as (JSON lines, how many).
py::tuple drain_steps() {
  std::string text;
  int64_t count;
  {
    auto& s = state();
    std::lock_guard<std::mutex> lock(s.mu);
    text.swap(s.steps);
    count = s.steps_count;
    s.steps_count = 0;
  }
  return py::make_tuple(py::str(text), count);
}

int64_t last_seq(const std::string& group) {
  auto& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.seq.find(group);
  return it == s.seq.end() ? -1 : it->second - 1;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "tracekit's native DDP all-reduce hook: records each gradient bucket without the GIL";
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
  m.def("close_step", &close_step, py::arg("step"), py::arg("start_ns"), py::arg("end_ns"), py::arg("loss"),
        py::arg("nonfinite"));
  m.def("drain_steps", &drain_steps);
  m.def("drain", &drain, py::arg("interrupted") = "");
  m.def("begin_call", &begin_call, py::arg("op"), py::arg("group"), py::arg("payload"), py::arg("async_op"),
        py::arg("source"));
  m.def("finish_call", &RecordingAllReduceHook::finish, py::arg("token"), py::arg("ok"), py::arg("error") = "");
  m.def("oldest_inflight", &oldest_inflight);
}
