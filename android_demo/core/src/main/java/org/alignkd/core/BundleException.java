package org.alignkd.core;

/**
 * A problem with a bundle or an input the user chose, worded as one sentence that names the input and the fix
 * (the same rule as alignkd's AlignKDError); the app shows the message as it is.
 */
public final class BundleException extends Exception {
    private static final long serialVersionUID = 1L;

    public BundleException(String message) {
        super(message);
    }

    public BundleException(String message, Throwable cause) {
        super(message, cause);
    }
}
