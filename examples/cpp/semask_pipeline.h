// semask_pipeline.h: the pre/post-processing of semask-deploy's Python pipeline for SeMask-FPN models, in plain C++17
// (mask-classification models resize as detectron2 does: sidecarResizeKind tells them apart; the apps refuse them).
//
// Shared by semask_aoti.cpp (AOTInductor package, LibTorch) and semask_trt.cpp (TensorRT engine), and
// unit-tested against OpenCV/numpy/PyTorch by tests/examples/test_cpp_pipeline.py (semask_pipeline_test.cpp).
// No dependencies beyond the standard library.
//
//   image (binary PPM, RGB 8-bit)
//     -> keep-ratio size (mmcv.imrescale: f = min(long/max(h,w), short/min(h,w)), size = int(x*f + 0.5))
//     -> resize: a bit-for-bit copy of OpenCV's cv::resize(INTER_LINEAR) for 8-bit images (11-bit fixed-point
//        weights; the 2x-downscale case is INTER_AREA, as in OpenCV)           -- semask_deploy.data.resize_image
//     -> normalise: (rgb - mean) * float(1/std), planar NCHW float32          -- semask_deploy.data.normalize
//     -> the model
//     -> logits resized bilinearly (align_corners=False, PyTorch's source-index rule) to the original size
//        and argmax over the classes, row by row                              -- semask_deploy.model.fast.resize_argmax
//        (or, for labels-only graphs, OpenCV INTER_NEAREST on the labels)     -- runtime.pipeline.labels_to_size
//     -> label map as PGM (P5, one byte per pixel = class index)

#pragma once

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace semask {

struct Image {  // 8-bit RGB, row-major H x W x 3
    int width = 0, height = 0;
    std::vector<uint8_t> rgb;
};

constexpr std::array<float, 3> kMean{123.675f, 116.28f, 103.53f};  // ImageNet, RGB on 0-255 (the sidecar's)
constexpr std::array<float, 3> kStd{58.395f, 57.12f, 57.375f};

// ---------------------------------------------------------------------------------------------- files

// Binary PPM (P6, maxval 255) reader; `convert photo.jpg photo.ppm` (or cv2.imwrite) makes one.
inline Image readPpm(std::string const& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error("cannot open " + path);
    auto token = [&]() {
        std::string t;
        while (f && t.empty()) {
            int c = f.get();
            if (c == std::char_traits<char>::eof()) break;
            if (c == '#') {
                std::string skip;
                std::getline(f, skip);
            } else if (!std::isspace(c)) {
                t.push_back(static_cast<char>(c));
                for (int p = f.peek(); p != std::char_traits<char>::eof() && !std::isspace(p); p = f.peek())
                    t.push_back(static_cast<char>(f.get()));
            }
        }
        if (t.empty()) throw std::runtime_error(path + ": truncated PPM header");
        return t;
    };
    if (token() != "P6") throw std::runtime_error(path + ": not a binary PPM (P6)");
    Image img;
    img.width = std::stoi(token());
    img.height = std::stoi(token());
    if (std::stoi(token()) != 255) throw std::runtime_error(path + ": only 8-bit PPM is supported");
    if (img.width <= 0 || img.height <= 0) throw std::runtime_error(path + ": empty image");
    f.get();  // the single whitespace after maxval
    img.rgb.resize(static_cast<size_t>(img.width) * img.height * 3);
    f.read(reinterpret_cast<char*>(img.rgb.data()), static_cast<std::streamsize>(img.rgb.size()));
    if (!f) throw std::runtime_error(path + ": truncated PPM");
    return img;
}

// PGM (P5) writer: one byte per pixel. Written to `path.tmp` and renamed, so a reader never sees half a file.
inline void writePgm(std::string const& path, std::vector<uint8_t> const& pixels, int w, int h) {
    std::string const tmp = path + ".tmp";
    {
        std::ofstream f(tmp, std::ios::binary);
        f << "P5\n" << w << " " << h << "\n255\n";
        f.write(reinterpret_cast<char const*>(pixels.data()), static_cast<std::streamsize>(pixels.size()));
        if (!f) throw std::runtime_error("cannot write " + tmp);
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) throw std::runtime_error("cannot rename " + tmp + " to " + path);
}

inline void writePpm(std::string const& path, Image const& img) {  // for tests and debugging
    std::ofstream f(path, std::ios::binary);
    f << "P6\n" << img.width << " " << img.height << "\n255\n";
    f.write(reinterpret_cast<char const*>(img.rgb.data()), static_cast<std::streamsize>(img.rgb.size()));
    if (!f) throw std::runtime_error("cannot write " + path);
}

// ---------------------------------------------------------------------------------------------- sizes

// The test-time resize kind written in an artifact's sidecar (<artifact without its suffix>.json, beside it):
// "keep_ratio" (SeMask-FPN: mmcv's rule with OpenCV's bilinear, what keepRatioSize + resizeLinearCv reproduce) or
// "shortest_edge" (Mask2Former, MaskFormer, FaPN: detectron2's rule with PIL's bilinear filter, which these apps do
// not reproduce). A missing sidecar reads as "keep_ratio".
inline std::string sidecarResizeKind(std::string const& artifactPath) {
    std::string const dir = artifactPath.substr(0, artifactPath.find_last_of('/') + 1);
    std::string const name = artifactPath.substr(dir.size());
    std::string const stem = name.find('.') == std::string::npos ? name : name.substr(0, name.find_last_of('.'));
    std::ifstream f(dir + stem + ".json");
    if (!f) return "keep_ratio";
    std::string const text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    return text.find("\"shortest_edge\"") != std::string::npos ? "shortest_edge" : "keep_ratio";
}

// mmcv.imrescale: the largest keep-ratio size with long edge <= longEdge and short edge <= shortEdge.
// Returns {width, height}; the same double arithmetic as semask_deploy.data.transforms.rescale_size.
inline std::pair<int, int> keepRatioSize(int w, int h, int longEdge, int shortEdge) {
    double const lo = std::max(longEdge, shortEdge), sh = std::min(longEdge, shortEdge);
    double const f = std::min(lo / std::max(w, h), sh / std::min(w, h));
    // a 1xN strip never becomes 0 pixels high (as rescale_size)
    return {std::max(1, static_cast<int>(w * f + 0.5)), std::max(1, static_cast<int>(h * f + 0.5))};
}

// ---------------------------------------------------------------------------------------------- image resize

namespace detail {
constexpr int kCoefBits = 11, kCoefScale = 1 << kCoefBits;  // INTER_RESIZE_COEF_BITS / _SCALE
// OpenCV's vertical pass (VResizeLinearVec_32s8u) rounds in 16 bits: ((S0>>4)*b0 >> 16) + ((S1>>4)*b1 >> 16),
// then (v + 2) >> 2. OpenCV 5.1's wheels use it for every pixel of a row (checked against cv2.resize by the
// tests); the older scalar tail, (S0*b0 + S1*b1 + 2^21) >> 22, differs by one level at times and is not used.

inline int16_t saturateShort(float v) {  // saturate_cast<short>(float): round to nearest even
    long r = std::lrint(v);
    return static_cast<int16_t>(std::clamp<long>(r, std::numeric_limits<int16_t>::min(), std::numeric_limits<int16_t>::max()));
}
inline int16_t saturateShort(int v) {
    return static_cast<int16_t>(std::clamp(v, -32768, 32767));
}

struct Taps {  // per output index: first source index (clamped) and fixed-point weights
    std::vector<int> ofs;
    std::vector<int16_t> a0, a1;
    int lastTwoTap = 0;  // indices >= this use one tap (OpenCV's xmax), horizontal axis only
};

inline Taps linearTaps(int src, int dst, bool horizontal) {
    Taps t;
    t.ofs.resize(dst), t.a0.resize(dst), t.a1.resize(dst);
    double const scale = 1.0 / (static_cast<double>(dst) / src);  // scale_x = 1./inv_scale_x
    t.lastTwoTap = dst;
    for (int d = 0; d < dst; ++d) {
        float f = static_cast<float>((d + 0.5) * scale - 0.5);
        int s = static_cast<int>(std::floor(f));
        f -= static_cast<float>(s);
        if (horizontal) {
            if (s < 0) f = 0, s = 0;
            if (s + 1 >= src) {
                t.lastTwoTap = std::min(t.lastTwoTap, d);
                if (s >= src - 1) f = 0, s = src - 1;
            }
        }
        t.ofs[d] = s;
        t.a0[d] = saturateShort((1.f - f) * kCoefScale);
        t.a1[d] = saturateShort(f * kCoefScale);
    }
    return t;
}
}  // namespace detail

// cv::resize(src, {w, h}, 0, 0, cv::INTER_LINEAR) for 8-bit 3-channel images, bit for bit.
inline Image resizeLinearCv(Image const& src, int w, int h) {
    using namespace detail;
    int const cn = 3;
    if (w == src.width && h == src.height) return src;
    Image dst{w, h, std::vector<uint8_t>(static_cast<size_t>(w) * h * cn)};
    if (src.width == 2 * w && src.height == 2 * h) {  // OpenCV switches to INTER_AREA for exact 2x downscale
        for (int y = 0; y < h; ++y)
            for (int x = 0; x < w; ++x)
                for (int c = 0; c < cn; ++c) {
                    auto p = [&](int yy, int xx) { return int(src.rgb[(static_cast<size_t>(yy) * src.width + xx) * cn + c]); };
                    int s = p(2 * y, 2 * x) + p(2 * y, 2 * x + 1) + p(2 * y + 1, 2 * x) + p(2 * y + 1, 2 * x + 1);
                    dst.rgb[(static_cast<size_t>(y) * w + x) * cn + c] = static_cast<uint8_t>((s + 2) >> 2);
                }
        return dst;
    }
    Taps const tx = linearTaps(src.width, w, true), ty = linearTaps(src.height, h, false);
    int const rowLen = w * cn;
    // horizontal pass of one source row -> int (scaled by 2^11)
    auto hrow = [&](int sy, std::vector<int>& out) {
        uint8_t const* S = src.rgb.data() + static_cast<size_t>(sy) * src.width * cn;
        for (int dx = 0; dx < w; ++dx) {
            int const sx = tx.ofs[dx] * cn;
            for (int c = 0; c < cn; ++c) {
                out[dx * cn + c] = dx < tx.lastTwoTap ? S[sx + c] * tx.a0[dx] + S[sx + c + cn] * tx.a1[dx]
                                                      : S[sx + c] * kCoefScale;
            }
        }
    };
    std::vector<int> r0(rowLen), r1(rowLen);
    int cached0 = -1, cached1 = -1;
    for (int dy = 0; dy < h; ++dy) {
        int const sy0 = std::clamp(ty.ofs[dy], 0, src.height - 1), sy1 = std::clamp(ty.ofs[dy] + 1, 0, src.height - 1);
        if (sy0 != cached0) {
            if (sy0 == cached1) std::swap(r0, r1), std::swap(cached0, cached1);
            else hrow(sy0, r0), cached0 = sy0;
        }
        if (sy1 != cached1) hrow(sy1, r1), cached1 = sy1;
        int const b0 = ty.a0[dy], b1 = ty.a1[dy];
        uint8_t* D = dst.rgb.data() + static_cast<size_t>(dy) * rowLen;
        for (int x = 0; x < rowLen; ++x) {
            int const m0 = (saturateShort(r0[x] >> 4) * b0) >> 16, m1 = (saturateShort(r1[x] >> 4) * b1) >> 16;
            int const v = (saturateShort(m0 + m1) + 2) >> 2;
            D[x] = static_cast<uint8_t>(std::clamp(v, 0, 255));
        }
    }
    return dst;
}

// ---------------------------------------------------------------------------------------------- normalise

// uint8 RGB (H, W, 3) -> float32 planar (3, H, W): (v - mean) * float(1 / std), as semask_deploy.data.normalize.
inline std::vector<float> normalizeChw(Image const& img, std::array<float, 3> const& mean = kMean,
                                       std::array<float, 3> const& stdev = kStd) {
    size_t const plane = static_cast<size_t>(img.width) * img.height;
    std::vector<float> out(3 * plane);
    std::array<float, 3> inv{};
    for (int c = 0; c < 3; ++c) inv[c] = static_cast<float>(1.0 / static_cast<double>(stdev[c]));
    for (size_t p = 0; p < plane; ++p)
        for (int c = 0; c < 3; ++c) out[c * plane + p] = (static_cast<float>(img.rgb[p * 3 + c]) - mean[c]) * inv[c];
    return out;
}

// ---------------------------------------------------------------------------------------------- logits -> labels

struct LinearAxis {  // PyTorch's bilinear (align_corners=False) source taps along one axis, in float32
    std::vector<int> i0, i1;
    std::vector<float> l0, l1;
};

inline LinearAxis torchLinearAxis(int src, int dst) {
    LinearAxis a;
    a.i0.resize(dst), a.i1.resize(dst), a.l0.resize(dst), a.l1.resize(dst);
    float const scale = static_cast<float>(src) / static_cast<float>(dst);
    for (int d = 0; d < dst; ++d) {
        float s = std::max((static_cast<float>(d) + 0.5f) * scale - 0.5f, 0.f);
        int i0 = std::min(static_cast<int>(s), src - 1);
        float l1 = std::clamp(s - static_cast<float>(i0), 0.f, 1.f);
        a.i0[d] = i0;
        a.i1[d] = i0 + (i0 < src - 1 ? 1 : 0);
        a.l1[d] = l1;
        a.l0[d] = 1.f - l1;
    }
    return a;
}

// logits float32 (K, h, w) planar -> labels (H, W): bilinear resize (align_corners=False) then argmax over K,
// separable like semask_deploy.model.fast.resize_argmax (along W first, then the two rows blended along H);
// the first maximum wins. No K x H x W buffer: two resized rows per output row.
inline std::vector<int32_t> resizeArgmax(float const* logits, int K, int h, int w, int H, int W) {
    LinearAxis const ax = torchLinearAxis(w, W), ay = torchLinearAxis(h, H);
    std::vector<int32_t> labels(static_cast<size_t>(H) * W);
    size_t const plane = static_cast<size_t>(h) * w;
    std::vector<float> rowA(static_cast<size_t>(W) * K), rowB(static_cast<size_t>(W) * K);  // (W, K) per row
    int cachedA = -1, cachedB = -1;
    auto resizeRow = [&](int y, std::vector<float>& out) {
        for (int x = 0; x < W; ++x) {
            int const x0 = ax.i0[x], x1 = ax.i1[x];
            float const w0 = ax.l0[x], w1 = ax.l1[x];
            for (int k = 0; k < K; ++k) {
                float const* l = logits + k * plane + static_cast<size_t>(y) * w;
                out[static_cast<size_t>(x) * K + k] = l[x0] * w0 + l[x1] * w1;
            }
        }
    };
    for (int Y = 0; Y < H; ++Y) {
        int const y0 = ay.i0[Y], y1 = ay.i1[Y];
        if (y0 != cachedA) {
            if (y0 == cachedB) std::swap(rowA, rowB), std::swap(cachedA, cachedB);
            else resizeRow(y0, rowA), cachedA = y0;
        }
        if (y1 != y0 && y1 != cachedB) resizeRow(y1, rowB), cachedB = y1;
        float const wy0 = y1 == y0 ? ay.l0[Y] + ay.l1[Y] : ay.l0[Y], wy1 = y1 == y0 ? 0.f : ay.l1[Y];
        std::vector<float> const& b = y1 == y0 ? rowA : rowB;
        for (int X = 0; X < W; ++X) {
            float const* pa = rowA.data() + static_cast<size_t>(X) * K;
            float const* pb = b.data() + static_cast<size_t>(X) * K;
            int best = 0;
            float bestValue = -std::numeric_limits<float>::infinity();
            for (int k = 0; k < K; ++k) {
                float const v = wy0 * pa[k] + wy1 * pb[k];
                if (v > bestValue || (std::isnan(v) && !std::isnan(bestValue))) bestValue = v, best = k;
            }
            labels[static_cast<size_t>(Y) * W + X] = best;
        }
    }
    return labels;
}

// Labels (h, w) -> (H, W) like cv::resize(INTER_NEAREST): source index floor(d * src/dst), for labels-only graphs.
inline std::vector<int32_t> resizeLabelsNearest(int32_t const* labels, int h, int w, int H, int W) {
    std::vector<int32_t> out(static_cast<size_t>(H) * W);
    double const fy = static_cast<double>(h) / H, fx = static_cast<double>(w) / W;
    for (int y = 0; y < H; ++y) {
        int const sy = std::min(static_cast<int>(std::floor(y * fy)), h - 1);
        for (int x = 0; x < W; ++x)
            out[static_cast<size_t>(y) * W + x] = labels[static_cast<size_t>(sy) * w + std::min(static_cast<int>(std::floor(x * fx)), w - 1)];
    }
    return out;
}

// int32 labels -> one byte per pixel (classes >= 255 are clipped to 255).
inline std::vector<uint8_t> labelsToBytes(std::vector<int32_t> const& labels) {
    std::vector<uint8_t> out(labels.size());
    for (size_t i = 0; i < labels.size(); ++i) out[i] = static_cast<uint8_t>(std::clamp<int32_t>(labels[i], 0, 255));
    return out;
}

}  // namespace semask
