// tracekit's native DDP communication hook: DDP's own all-reduce, recorded without the GIL.
//
// A Python comm hook costs every gradient bucket a GIL hand-off on gloo's completion thread (its
// `.then` continuation), measured at +2 to +16 % step time before recording anything. This hook
// does what PyTorch's built-in ALLREDUCE hook does (divide by the group size, all-reduce, return
// the reduced buffer) and, in C++:
//   * checks the *local* bucket for non-finite values before reducing (one sum: a NaN or inf
//     anywhere makes it non-finite);
//   * numbers the all-reduce from the same per-group counter tracekit's Python wrappers use, so
//     DDP's buckets and the script's own collectives share one sequence per process group;
//   * records enter (before the call) and exit (when the work completed: the future's callback,
//     on gloo's thread) and whether it failed.
// Python drains the completed records at every spool flush (the flusher thread, off the training
// thread), at exit, and on SIGTERM (then in-flight ones too, marked interrupted).
#include <torch/extension.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/comm.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>

#include <atomic>
#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
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
  int64_t seq = 0;
  int64_t enter_ns = 0;
  int64_t exit_ns = 0;
  int64_t step = 0;
  int64_t bytes = 0;
  std::string dtype;
  bool ok = true;
  bool nonfinite = false;
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

py::tuple as_tuple(const Record& r) {
  return py::make_tuple(r.group, r.seq, r.enter_ns, r.exit_ns, r.step, r.bytes, r.dtype, r.ok,
                        r.nonfinite, r.error);
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
    if (check_finite_ && at::isFloatingType(buffer.scalar_type())) {
      record.nonfinite = !std::isfinite(buffer.sum().item<double>());
      int expected = -1;
      auto& flag = state().nonfinite;
      if (record.nonfinite) {
        flag.store(1);
      } else {
        flag.compare_exchange_strong(expected, 0);
      }
    }
    record.group = name_;
    record.bytes = static_cast<int64_t>(buffer.numel()) * static_cast<int64_t>(buffer.element_size());
    record.dtype = std::string(c10::toString(buffer.scalar_type()));
    record.step = state().step.load();
    int64_t token;
    {
      auto& s = state();
      std::lock_guard<std::mutex> lock(s.mu);
      record.seq = s.seq[name_]++;
      token = s.next_token++;
      s.inflight.emplace(token, record);
    }
    buffer.div_(state_->getSize());  // what the built-in ALLREDUCE hook does: average
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

// Completed records (and, with `interrupted`, the in-flight ones, marked failed with that reason).
py::list drain(const std::string& interrupted) {
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
  py::list result;
  for (const auto& r : out) {
    result.append(as_tuple(r));
  }
  return result;
}

// The oldest in-flight bucket all-reduce as (group, seq, enter_ns), or None.
py::object oldest_inflight() {
  auto& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.inflight.empty()) {
    return py::none();
  }
  const Record& r = s.inflight.begin()->second;
  return py::make_tuple(r.group, r.seq, r.enter_ns);
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
  m.def("take_nonfinite", []() -> py::object {
    int v = state().nonfinite.exchange(-1);
    return v < 0 ? py::object(py::none()) : py::object(py::bool_(v == 1));
  });
  m.def("drain", &drain, py::arg("interrupted") = "");
  m.def("oldest_inflight", &oldest_inflight);
}
